"""The serve page in headless Chromium: the server on a free loopback port, the page uploads two
synthetic photographs itself (``/?demo``: the same upload path as a chosen file), and the numbers
it shows equal ``predict``'s for the same files; a screenshot lands in the test's tmp folder."""

import html.parser
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="the serve extra is not installed: pip install '.[serve]'")
pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install '.[serve]'")
pytest.importorskip("multipart", reason="the serve extra is not installed: pip install '.[serve]'")

from jaxcerv.inference import predict  # noqa: E402
from jaxcerv.inference.webapp import app as webapp  # noqa: E402

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)


class _Cards(html.parser.HTMLParser):
    """Each result card's data attributes and the probability text it shows."""

    def __init__(self) -> None:
        super().__init__()
        self.cards: list[dict[str, str]] = []
        self.body: dict[str, str] = {}
        self._in_probability = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        if tag == "article" and (a.get("id") or "").startswith("photo-"):  # not the template
            self.cards.append({k: v or "" for k, v in a.items()})
        self._in_probability = tag == "strong" and a.get("class") == "probability"

    def handle_data(self, data):
        if self._in_probability and self.cards:
            self.cards[-1]["shown"] = self.cards[-1].get("shown", "") + data

    def handle_endtag(self, tag):
        self._in_probability = False


def _chromium(url: str, profile: str, *args: str) -> subprocess.CompletedProcess:
    # Virtual time stands still while a request is pending, so the budget is page time, not
    # the model's; --no-sandbox: CI runs as root in a container.
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={profile}", "--virtual-time-budget=60000", *args, url],
        capture_output=True, text=True, timeout=300,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (apt-get install chromium)")
def test_page_shows_predicts_numbers_for_an_uploaded_photograph(smoke_workdir, tmp_path):
    photos = []
    for k, (w, h) in enumerate([(300, 200), (160, 240)]):
        path = tmp_path / f"synthetic {k}.png"
        pixels = np.random.default_rng(k).integers(0, 256, (h, w, 3), np.uint8)
        Image.fromarray(pixels).save(path)
        photos.append(str(path))
    expected = predict.predict_run(photos, str(tmp_path / "predict"), workdir=smoke_workdir)
    app = webapp.create_app(webapp.Scorer.load(workdir=smoke_workdir), demo=photos)
    with webapp.running(app) as url:
        assert url.startswith("http://127.0.0.1:")
        dom = _chromium(url + "/?demo", str(tmp_path / "profile"), "--dump-dom")
        shot = tmp_path / "page.png"
        _chromium(url + "/?demo", str(tmp_path / "profile"), "--window-size=1100,1900",
                  f"--screenshot={shot}")
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = _Cards()
    page.feed(dom.stdout)
    assert page.body.get("data-state") == "done", dom.stdout[-2000:]
    assert len(page.cards) == 2
    for card, r in zip(page.cards, expected, strict=True):
        assert float(card["data-probability"]) == r["probability"]
        assert int(card["data-label"]) == r["label"]
        assert float(card["data-threshold"]) == r["threshold"]
        assert card["shown"] == f"{r['probability']:.3f}"
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size == (1100, 1900)
        # The heatmap canvas was drawn: the screenshot holds more than the page's few flat colours.
        assert len(im.convert("RGB").getcolors(1 << 24)) > 1000
    assert os.path.getsize(shot) > 10_000

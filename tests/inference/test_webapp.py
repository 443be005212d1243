"""The serve page's API through Starlette's TestClient: predict's numbers for an upload, the
threshold, the provenance, every kind of bad upload refused with a 4xx and one line, and the
server still serving after them; upload names never become paths, nothing is kept unless asked."""

import base64
import io
import json
import os

import numpy as np
import pytest
from conftest import png_header
from PIL import Image

pytest.importorskip("starlette", reason="the serve extra is not installed: pip install '.[serve]'")
pytest.importorskip("httpx2", reason="Starlette's TestClient needs httpx2 (the test extra)")
pytest.importorskip("multipart", reason="the serve extra is not installed: pip install '.[serve]'")

from starlette.testclient import TestClient  # noqa: E402

from jaxcerv.inference import export, predict, served  # noqa: E402
from jaxcerv.inference.webapp import app as webapp  # noqa: E402


def _png(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _fake(probability: float, threshold: float) -> webapp.Scorer:
    """A model that gives every image ``probability`` and a 2 x 2 grid peaking top-left."""
    card = {"threshold": threshold, "image_size": 56, "patch_size": 28, "grid_size": 2,
            "resize": "pad", "dataset": "atlas", "config_digest": "d" * 64,
            "trained_on_synthetic_data": False, "test_metrics": {"roc_auc": 0.8, "n": 50}}

    def forward(x):
        grid = np.array([[0.9, 0.2], [0.1, 0.0]], np.float32)
        return {"probabilities": np.full(len(x), probability, np.float32),
                "weights": np.tile(grid, (len(x), 1, 1))}

    return webapp.Scorer(forward, card, 8)


def _post(client, *files):
    return client.post("/api/predict", files=[("photo", f) for f in files])


@pytest.fixture(scope="module")
def exported(smoke_workdir, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("export") / "model.jaxexport")
    export.export_run(smoke_workdir, path)
    return path


@pytest.fixture(scope="module")
def client(exported):
    return TestClient(webapp.create_app(webapp.Scorer.load(model=exported)))


def test_model_panel_says_threshold_provenance_and_synthetic_warning(client, smoke_workdir):
    info = client.get("/api/model").json()
    results = json.loads(open(os.path.join(smoke_workdir, "results.json")).read())
    assert info["threshold"] == results["threshold"]
    assert info["model"]["dataset"] == "synthetic_cervix"
    assert info["model"]["test_roc_auc"] == results["test"]["roc_auc"]
    assert info["model"]["test_n"] == results["test"]["n"]
    assert info["warning"] == served.SYNTHETIC_WARNING
    assert info["demo"] == [] and client.get("/demo-photo/0").status_code == 404
    assert len(info["colormap"]) == 256
    page = client.get("/").text
    assert "/static/app.js" in page and "http" not in page.replace("http-equiv", "")
    for asset in ("app.js", "style.css"):  # everything the page needs ships in the package
        text = client.get(f"/static/{asset}").text
        assert "https://" not in text and "http://" not in text


def test_upload_gets_predicts_json_line_and_weight_grid(client, exported, tmp_path):
    photo = tmp_path / "wide photo.png"
    photo.write_bytes(_png(300, 200, seed=1))
    (expected,) = served.predict_files(exported, [str(photo)], str(tmp_path / "p"),
                                       save_weights=True, warn=io.StringIO())
    with open(expected["heatmap"], "rb") as f:
        figure = f.read()
    reply = _post(client, ("wide photo.png", photo.read_bytes(), "image/png"))
    assert reply.status_code == 200
    (r,) = reply.json()["results"]
    line = r["line"]
    assert line == {**expected, "image": "wide photo.png", "heatmap": "wide_photo.heatmap.png",
                    "weights_file": "wide_photo.weights.npy"}
    saved = np.load(expected["weights_file"])
    np.testing.assert_array_equal(np.array(r["weights"], np.float32), saved)
    np.testing.assert_array_equal(np.load(io.BytesIO(base64.b64decode(r["npy"]))), saved)
    png = client.post("/api/figure", files={"photo": ("wide photo.png", photo.read_bytes())})
    assert png.status_code == 200 and png.content == figure  # predict's figure, byte for byte
    assert png.headers["content-disposition"] == 'attachment; filename="wide_photo.heatmap.png"'
    two = [("photo", ("a.png", photo.read_bytes()))] * 2
    assert client.post("/api/figure", files=two).status_code == 400
    shown = Image.open(io.BytesIO(base64.b64decode(r["photo"].split(",", 1)[1])))
    assert shown.size == (300, 200)  # the photograph at its own aspect


def test_workdir_scorer_gives_predicts_regulator(smoke_workdir, tmp_path):
    photo = tmp_path / "p.png"
    photo.write_bytes(_png(120, 160, seed=2))
    (expected,) = predict.predict_run([str(photo)], str(tmp_path / "o"), workdir=smoke_workdir,
                                      save_weights=True)
    client = TestClient(webapp.create_app(webapp.Scorer.load(workdir=smoke_workdir)))
    (r,) = _post(client, ("p.png", photo.read_bytes(), "image/png")).json()["results"]
    assert r["line"]["regulator"] == expected["regulator"]
    assert r["line"]["probability"] == expected["probability"]


@pytest.mark.parametrize("probability,threshold,label", [(0.6, 0.7, 0), (0.6, 0.5, 1),
                                                         (0.5, 0.5, 1)])
def test_decision_is_taken_at_the_runs_threshold(probability, threshold, label):
    client = TestClient(webapp.create_app(_fake(probability, threshold)))
    (r,) = _post(client, ("a.png", _png(80, 60), "image/png")).json()["results"]
    assert r["line"]["label"] == label and r["line"]["threshold"] == threshold
    assert r["line"]["class"] == served.CLASS_NAMES[label]
    assert "warning" not in r["line"] and client.get("/api/model").json()["warning"] == ""


def test_bad_uploads_get_a_4xx_and_one_line_and_the_server_keeps_serving():
    limits = webapp.Limits(max_file_mb=0.05, max_megapixels=0.01, max_files=2)
    client = TestClient(webapp.create_app(_fake(0.3, 0.5), limits))
    good = ("good.png", _png(80, 60), "image/png")
    jpeg = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(jpeg, "JPEG")
    cases = {
        "not an image": (("notes.txt", b"hello, not a photograph", "text/plain"),
                         "notes.txt: not a readable image"),
        "truncated": (("cut.jpg", jpeg.getvalue()[: len(jpeg.getvalue()) // 2], "image/jpeg"),
                      "cut.jpg: corrupt or truncated image"),
        "too large": (("big.png", b"\x89PNG" + bytes(60_000), "image/png"),
                      "big.png: 0.1 MB, over the limit of 0.05 MB"),
        "too many pixels": (("huge.png", png_header(200, 100), "image/png"),
                            "huge.png: 200x100 px is 0.02 megapixels, over the limit of 0.01"),
        "empty": (("none.png", b"", "image/png"), "none.png: the file is empty"),
        "bomb": (("bomb.png", png_header(20_000, 20_000), "image/png"),  # past Pillow's own cap
                 "bomb.png: over the limit of 0.01 megapixels"),
    }
    for what, (upload, message) in cases.items():
        reply = _post(client, upload, good)
        assert reply.status_code == 422, what
        bad, fine = reply.json()["results"]
        assert bad["error"].startswith(message) and "\n" not in bad["error"], (what, bad)
        assert "/" not in bad["error"].split(":")[0], what  # names the upload, not our path
        assert fine["line"]["probability"] == pytest.approx(0.3)
    too_many = _post(client, good, good, good)
    assert too_many.status_code == 413
    assert too_many.json() == {"error": "too many photographs at once: at most 2 per upload"}
    body = client.post("/api/predict", content=b"x" * (limits.max_request_bytes + 1),
                       headers={"content-type": "multipart/form-data; boundary=b"})
    assert body.status_code == 413 and "over" in body.json()["error"]
    no_photo = client.post("/api/predict", data={"note": "x"}, files={"other": ("a", b"x")})
    assert no_photo.status_code == 400 and "no photograph" in no_photo.json()["error"]
    assert client.post("/api/predict", json={"photo": "x"}).status_code == 415
    assert _post(client, good).status_code == 200  # still serving


def test_upload_names_are_never_paths_and_nothing_is_kept(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    os.makedirs(tmp_path / "tmp")
    client = TestClient(webapp.create_app(_fake(0.3, 0.5)))
    reply = _post(client, ("../../etc/evil name.png", _png(80, 60), "image/png"))
    (r,) = reply.json()["results"]
    assert r["name"] == "evil name.png" and r["line"]["image"] == "evil name.png"
    assert r["line"]["weights_file"] == "evil_name.weights.npy"
    assert os.listdir(tmp_path / "tmp") == []  # the scoring folder is gone
    assert not any("evil" in f for _, _, fs in os.walk(tmp_path) for f in fs)

    keep = tmp_path / "kept"
    keep.mkdir()
    client = TestClient(webapp.create_app(_fake(0.3, 0.5), keep=str(keep)))
    _post(client, ("../x.png", _png(80, 60), "image/png"))
    kept = sorted(os.listdir(keep))
    assert len(kept) == 3 and "predictions.jsonl" in kept  # upload, weights, lines
    (line,) = [json.loads(t) for t in (keep / "predictions.jsonl").read_text().splitlines()]
    assert line["upload_name"] == "x.png" and os.path.dirname(line["image"]) == str(keep)
    with pytest.raises(ValueError, match="not a folder"):
        webapp.create_app(_fake(0.3, 0.5), keep=str(tmp_path / "missing"))

"""The report of a real smoke run: every file the HTML references exists under report/, and the
tables show exactly what results.json holds (cross-validation index: mean and SD recomputed)."""

import json
import os
import re
import shutil
from html.parser import HTMLParser
from urllib.parse import urlparse

import numpy as np
import pytest

from jaxcerv.data import pipeline
from jaxcerv.evaluation import metrics
from jaxcerv.reporting import report
from jaxcerv.runtime.rundir import RunDir


class _Page(HTMLParser):
    """Collects every src/href and the machine-readable numeric cells (data-key -> data-value)."""

    def __init__(self, path: str):
        super().__init__()
        self.refs: list[str] = []
        self.values: dict[str, float] = {}
        with open(path) as f:
            self.feed(f.read())

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.refs += [a[k] for k in ("src", "href") if a.get(k)]
        if "data-key" in a:
            assert a["data-key"] not in self.values, f"duplicate cell {a['data-key']}"
            self.values[a["data-key"]] = float(a["data-value"])


def _assert_refs_resolve(page_path: str, report_root: str) -> list[str]:
    page = _Page(page_path)
    assert page.refs
    root = os.path.realpath(report_root)
    for ref in page.refs:
        parsed = urlparse(ref)
        assert not parsed.scheme and not parsed.netloc and not ref.startswith("/"), ref
        target = os.path.realpath(os.path.join(os.path.dirname(page_path), parsed.path))
        assert target.startswith(root + os.sep), f"{ref} leaves the report folder"
        assert os.path.isfile(target), f"{ref} does not exist"
    return page.refs


@pytest.fixture(scope="module")
def single_report(smoke_workdir):
    labels, probs = report.load_test_curve(smoke_workdir)
    noise = np.random.default_rng(0).uniform(size=probs.shape)
    path = report.write_report(
        smoke_workdir,
        roc_baselines={"Random scores": (labels, noise)},
        style=report.HeatmapStyle("percentile", (5.0, 95.0), "magma", 0.6, 0.5),
        epochs=[1],
        num_gallery=2,
        num_evolution=1,
    )
    return path


def test_index_exists_and_every_reference_resolves(single_report, smoke_workdir):
    root = os.path.join(smoke_workdir, "report")
    assert single_report == os.path.join(root, "index.html")
    refs = set(_assert_refs_resolve(single_report, root))
    for fig in ("roc", "scores", "tsne", "grades", "quarters", "training"):
        assert f"figures/{fig}.png" in refs
    assert len([r for r in refs if r.startswith("gallery/")]) == 2
    assert len([r for r in refs if r.startswith("evolution/")]) == 1
    assert {"config.json", "results.json", "metrics.jsonl"} <= refs
    with open(os.path.join(root, "config.json")) as a, open(
        os.path.join(smoke_workdir, "config.json")
    ) as b:
        assert a.read() == b.read()


def test_tables_equal_results_json(single_report, smoke_workdir):
    with open(os.path.join(smoke_workdir, "results.json")) as f:
        results = json.load(f)
    shown = _Page(single_report).values
    expected = {f"test.{k}": v for k, v in results["test"].items()}
    expected |= {f"val.{k}": v for k, v in results["val"].items()}
    expected |= {f"explanation.{k}": v["value"] for k, v in results["explanation"].items()
                 if v["value"] is not None}
    expected |= {
        f"regulator.{k}": results["regulator"][k]
        for k in ("centre_error_patches", "initial_centre_error_patches")
    }
    assert shown == {k: float(v) for k, v in expected.items()}
    with open(single_report) as f:
        text = f.read()
    lo, hi = results["test_ci95"]["ci"]["roc_auc"]
    assert f"{lo:.3f} &ndash; {hi:.3f}" in text


def test_cross_validation_index(smoke_workdir, tmp_path):
    """Two folds (copies of the smoke run, fold 1 with another AUC): per-fold reports, links, and
    a mean/SD table recomputed here with numpy."""
    cv = tmp_path / "cv"
    fold_results = []
    for k in range(2):
        fold = cv / f"fold_{k}"
        for name in ("eval", "regulators"):
            shutil.copytree(os.path.join(smoke_workdir, name), fold / name)
        shutil.copy(os.path.join(smoke_workdir, "metrics.jsonl"), fold)
        with open(os.path.join(smoke_workdir, "results.json")) as f:
            r = json.load(f)
        r["test"]["roc_auc"] = r["test"]["roc_auc"] * (1 - 0.5 * k)
        (fold / "results.json").write_text(json.dumps(r))
        fold_results.append(r)
    shutil.copy(os.path.join(smoke_workdir, "config.json"), cv)
    summary = metrics.summarize_folds([r["test"] for r in fold_results])
    (cv / "results.json").write_text(json.dumps({"folds": fold_results, "test": summary}))

    config = RunDir(smoke_workdir).read_config()
    path = report.write_report(
        str(cv), data=pipeline.load(config, smoke_workdir), num_gallery=1, num_evolution=0
    )
    root = str(cv / "report")
    assert path == os.path.join(root, "index.html")
    refs = _assert_refs_resolve(path, root)
    assert {"fold_0/index.html", "fold_1/index.html"} <= set(refs)
    for k in range(2):
        _assert_refs_resolve(os.path.join(root, f"fold_{k}", "index.html"), root)
    shown = _Page(path).values
    aucs = np.array([r["test"]["roc_auc"] for r in fold_results])
    assert shown["mean.roc_auc"] == pytest.approx(aucs.mean(), rel=1e-12)
    assert shown["sd.roc_auc"] == pytest.approx(aucs.std(ddof=1), rel=1e-12)
    assert shown["fold_1.roc_auc"] == aucs[1]


def test_real_region_metrics_are_shown_with_the_masks_they_used(smoke_workdir, tmp_path):
    """A copy of the smoke run whose results carry the real-region block (as an AnnoCerv run's
    do): every metric's value is a machine-readable cell, and the usable masks are stated."""
    run = tmp_path / "annocerv_like"
    shutil.copytree(smoke_workdir, run, ignore=shutil.ignore_patterns("report"))
    with open(run / "results.json") as f:
        results = json.load(f)
    rng = np.random.default_rng(0)
    region = (rng.uniform(size=(10, 4, 4)) > 0.6).astype(float)
    usable = np.arange(10) % 5 != 0
    results["explanation_region"] = metrics.region_summary(
        rng.uniform(size=(10, 4, 4)), region, usable, np.arange(10).astype(str), n_boot=20)
    (run / "results.json").write_text(json.dumps(results))
    path = report.write_report(str(run), num_gallery=0, num_evolution=0)
    shown = _Page(path).values
    for key in ("region_auc", "mass_in_region", "pointing_game"):
        assert shown[f"explanation_region.{key}"] == pytest.approx(
            results["explanation_region"][key]["value"])
    text = open(path).read()
    assert "8 of 10 test masks usable (2 outlines could not be closed)" in text
    assert "skipped" in text


def test_stopping_criterion_counts_are_shown_per_epoch(smoke_workdir, tmp_path):
    """A copy of the smoke run whose log carries the stopping criterion's counts (as a run with
    regulator.stop_kl > 0 logs them): the report states the last epoch's count and each epoch's."""
    run = tmp_path / "stopping"
    shutil.copytree(smoke_workdir, run, ignore=shutil.ignore_patterns("report"))
    rows = RunDir(str(run)).read_metrics()
    assert len(rows) >= 2
    frozen = [min(3 * i, 7) for i in range(len(rows))]
    with open(run / "metrics.jsonl", "w") as f:
        for row, n in zip(rows, frozen, strict=True):
            f.write(json.dumps({**row, "regulators_frozen": n, "regulators_total": 9}) + "\n")
    path = report.write_report(str(run), num_gallery=0, num_evolution=0)
    assert _Page(path).values["regulator.frozen"] == frozen[-1]
    text = re.sub(r"<[^>]+>", "", open(path).read())
    assert f"{frozen[-1]} of 9 training images frozen after epoch {rows[-1]['epoch']}" in text
    per_epoch = ", ".join(f"{r['epoch']}: {n}" for r, n in zip(rows, frozen, strict=True))
    assert f"(frozen after each epoch: {per_epoch})" in text
    # Without the criterion (the smoke run itself) the report says nothing about it.
    assert "Stopping criterion" not in open(os.path.join(smoke_workdir, "report",
                                                         "index.html")).read()

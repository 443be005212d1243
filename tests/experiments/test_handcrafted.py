"""The hand-crafted baseline: colour conversion and texture statistics against hand-computed
values, and a whole cross-validation on synthetic data against scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from configs import default
from jaxcerv.experiments import handcrafted
from jaxcerv.runtime.rundir import RunDir, read_json


def test_lab_of_reference_colours():
    rgb = np.array([[255, 255, 255], [255, 0, 0], [0, 0, 0]], np.uint8)
    lab = handcrafted.srgb_to_lab(rgb)
    np.testing.assert_allclose(lab[0], [100, 0, 0], atol=0.01)
    np.testing.assert_allclose(lab[1], [53.24, 80.09, 67.20], atol=0.02)  # published sRGB red
    np.testing.assert_allclose(lab[2], [0, 0, 0], atol=0.01)


def test_glcm_of_a_checkerboard():
    levels = np.array([[0, 1, 0, 1], [1, 0, 1, 0]])
    contrast, homogeneity, energy, correlation = handcrafted.glcm_statistics(
        levels, np.ones_like(levels, bool), (0, 1))
    # Every horizontal pair is (0, 1) or (1, 0): P = [[0, .5], [.5, 0]].
    assert (contrast, homogeneity, energy) == pytest.approx((1.0, 0.5, 0.5))
    assert correlation == pytest.approx(-1.0)


def test_region_leaves_out_letterbox_and_highlights():
    image = np.full((40, 60, 3), 150, np.uint8)
    image[:8] = 0  # letterbox
    image[20, 30] = 255  # a specular highlight at the centre
    mask = handcrafted.cervix_region(image)
    assert not mask[:8].any() and not mask[20, 30] and mask[20, 25]
    assert not mask[20, 0]  # outside the central ellipse


def test_acetowhite_area_raises_the_whiteness_fraction():
    rng = np.random.default_rng(0)
    pink = np.clip(rng.normal([200, 120, 120], 6, (64, 64, 3)), 0, 255).astype(np.uint8)
    white = pink.copy()
    white[24:40, 24:40] = [235, 225, 225]
    names = list(handcrafted.FEATURE_NAMES)
    assert len(handcrafted.features(pink)) == len(names)
    f0, f1 = handcrafted.features(pink), handcrafted.features(white)
    k = names.index("white_frac_20")
    assert f0[k] < 0.01 < 0.1 < f1[k]


def test_cross_validation_writes_the_run_layout_and_pooled_auc(tmp_path):
    config = default.get_config()
    config.grid_size, config.patch_size = 4, 8
    config.data.num_images = 30
    config.data.num_folds = 3
    config.data.data_dir = str(tmp_path / "tfds")
    config.eval.bootstrap = 20
    work = tmp_path / "w"
    summary = handcrafted.run_baseline(config, str(work))
    run = RunDir(str(work))
    tests = [np.load(f.eval_npz("test")) for f in run.folds()]
    ids = np.concatenate([t["ids"] for t in tests])
    assert len(ids) == len(set(ids)) == 30  # every image tested exactly once
    labels = np.concatenate([t["labels"] for t in tests])
    probs = np.concatenate([t["probabilities"] for t in tests])
    pooled = read_json(run.results)["pooled_test"]
    assert pooled["roc_auc"] == pytest.approx(roc_auc_score(labels, probs))
    lo, hi = pooled["roc_auc_ci95"]
    assert lo <= hi
    for k, t in enumerate(tests):
        fold = read_json(run.fold(k).results)
        assert fold["test"]["roc_auc"] == pytest.approx(roc_auc_score(t["labels"],
                                                                      t["probabilities"]))
    assert summary["test"]["mean"]["roc_auc"] == pytest.approx(
        np.mean([roc_auc_score(t["labels"], t["probabilities"]) for t in tests]))

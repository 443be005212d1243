"""Figures are written and readable; overlay and ellipse pixels are checked by hand."""

import json

import matplotlib
import numpy as np
import pytest
from PIL import Image

from jaxcerv.reporting import viz


def _png_size(path):
    assert path.endswith(".png")
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def _assert_png(path, min_wh=(300, 250), max_wh=(2000, 1200)):
    w, h = _png_size(path)
    assert min_wh[0] <= w <= max_wh[0] and min_wh[1] <= h <= max_wh[1], (w, h)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    n = 40
    labels = np.r_[np.zeros(20, int), np.ones(20, int)]
    probs = np.clip(0.3 + 0.4 * labels + 0.2 * rng.standard_normal(n), 0, 1)
    grades = np.where(labels == 1, rng.integers(2, 5, n), rng.integers(0, 2, n))
    grades[:3] = -1
    days = rng.uniform(0, 365, n)
    days[:5] = np.nan
    features = rng.standard_normal((n, 16)) + 2.0 * labels[:, None]
    return labels, probs, grades, days, features


def test_classification_figures(tmp_path, data):
    labels, probs, grades, days, features = data
    other = np.clip(probs + 0.2 * np.random.default_rng(1).standard_normal(probs.size), 0, 1)
    _assert_png(
        viz.roc_curves({"ours": (labels, probs), "baseline": (labels, other)}, tmp_path / "roc.png")
    )
    _assert_png(viz.score_distribution(labels, probs, tmp_path / "s.png", threshold=0.5))
    _assert_png(viz.tsne(features, labels, tmp_path / "t.png", seed=0))
    _assert_png(viz.tsne(features[:5], labels[:5], tmp_path / "t5.png", seed=0))  # perplexity clip
    _assert_png(viz.probability_by_grade(grades, probs, tmp_path / "g.png"))
    _assert_png(viz.probability_by_quarter(days, probs, tmp_path / "q.png"))
    _assert_png(viz.probability_by_quarter(days, probs, tmp_path / "ql.png", labels=labels))


def test_no_dates_or_grades_writes_nothing(tmp_path, data):
    labels, probs, *_ = data
    no_dates = np.full(probs.size, np.nan)
    assert viz.probability_by_quarter(no_dates, probs, tmp_path / "q.png") is None
    assert viz.probability_by_grade(np.full(probs.size, -1), probs, tmp_path / "g.png") is None
    assert list(tmp_path.iterdir()) == []


def test_training_curves(tmp_path):
    log = tmp_path / "metrics.jsonl"
    rows = [
        {
            "epoch": e,
            "step": 10 * e,
            "train_loss": 1 / e,
            "train_bce": 0.8 / e,
            "train_spatial": 0.2 / e,
            "val_loss": 1.1 / e,
            "val_roc_auc": 0.5 + 0.04 * e,
            "val_balanced_accuracy": 0.5 + 0.03 * e,
            "lr": 1e-3,
        }
        for e in range(1, 8)
    ]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    _assert_png(viz.training_curves(log, tmp_path / "curves.png"), min_wh=(800, 300))
    # BCE and the spatial loss (~100x larger in real runs) never share an axis.
    bce_ax, spatial_ax, _ = viz.training_curves_figure(rows).axes
    lines = {ax: {ln.get_label(): ln.get_ydata() for ln in ax.get_lines()}
             for ax in (bce_ax, spatial_ax)}
    assert set(lines[bce_ax]) == {"Train BCE", "Validation BCE"}
    np.testing.assert_allclose(lines[bce_ax]["Validation BCE"], [r["val_loss"] for r in rows])
    assert set(lines[spatial_ax]) == {"Train spatial loss"}
    np.testing.assert_allclose(lines[spatial_ax]["Train spatial loss"],
                               [r["train_spatial"] for r in rows])


def test_overlay_alpha_extremes_and_hand_pixel():
    rng = np.random.default_rng(0)
    grid, patch = 4, 5
    image = rng.integers(0, 256, (grid * patch, grid * patch, 3), dtype=np.uint8)
    weights = rng.random((grid, grid))
    np.testing.assert_array_equal(viz.overlay_array(image, weights, alpha=0.0), image)

    full = viz.overlay_array(image, weights, alpha=1.0, cmap="viridis", patch_size=patch)
    # Pixel (row 7, col 13) lies in patch (1, 2).
    expected_norm = (weights[1, 2] - weights.min()) / (weights.max() - weights.min())
    expected = np.round(np.array(matplotlib.colormaps["viridis"](expected_norm)[:3]) * 255)
    np.testing.assert_array_equal(full[7, 13], expected.astype(np.uint8))
    # The top-weight patch gets the colormap's maximum colour.
    i, j = np.unravel_index(np.argmax(weights), weights.shape)
    top = np.round(np.array(matplotlib.colormaps["viridis"](1.0)[:3]) * 255)
    np.testing.assert_array_equal(full[i * patch + 2, j * patch + 2], top.astype(np.uint8))

    half = viz.overlay_array(image, weights, alpha=0.5, cmap="viridis")
    np.testing.assert_allclose(half.astype(float), 0.5 * image + 0.5 * full, atol=0.51)


def test_heatmap_rgba_and_normalisation():
    rgba = viz.heatmap_rgba(np.ones((3, 3)) * 7.0, (30, 30), alpha=0.5)
    assert rgba.shape == (30, 30, 4) and rgba.dtype == np.uint8
    assert np.all(rgba[..., 3] == 128)
    # A constant map normalises to zeros (not NaN) under both schemes.
    for scheme in ("minmax", "percentile"):
        norm = viz.normalise_weights(np.full((3, 3), 0.2), scheme)
        assert np.all(norm == 0.0)
    w = np.arange(100.0).reshape(10, 10)
    w[0, 0] = -1e6  # outlier is clipped by percentile scaling, dominates min-max
    pct = viz.normalise_weights(w, "percentile", (2, 98))
    lo, hi = np.percentile(w, [2, 98])
    assert pct[5, 5] == pytest.approx((55 - lo) / (hi - lo))
    assert pct.min() == 0.0 and pct.max() == 1.0
    with pytest.raises(ValueError, match="normalisation"):
        viz.normalise_weights(w, "zscore")


def test_gaussian_smooth_matches_scipy_interior():
    from scipy.ndimage import gaussian_filter

    x = np.random.default_rng(0).random((60, 50))
    sigma = 2.5
    ours = viz.gaussian_smooth(x, sigma)
    ref = gaussian_filter(x, sigma, truncate=4.0)
    m = 11  # away from the borders, where edge handling differs
    np.testing.assert_allclose(ours[m:-m, m:-m], ref[m:-m, m:-m], atol=1e-12)
    np.testing.assert_allclose(viz.gaussian_smooth(np.full((9, 7), 3.0), 2.0), 3.0)
    img = np.zeros((40, 40, 3), np.uint8)
    w = np.zeros((4, 4))
    w[1, 1] = 1.0
    out = viz.overlay_array(img, w, alpha=1.0, smooth_sigma=0.5, cmap="gray")
    # Smoothing spreads the single hot patch beyond its 10 px square, but with less intensity.
    assert 0 < out[15, 22, 0] < out[15, 15, 0] == 255


def test_regulator_ellipse_drawn_at_two_sigma():
    grid, patch = 10, 8
    image = np.zeros((grid * patch, grid * patch, 3), np.uint8)
    # Centre (h 5, v 4) -> pixel (x 40, y 32); sigma_h = 1.5, sigma_v = 1 patch.
    params = np.array([5.0, 4.0, 2.25, 0.0, 1.0])
    out = viz.overlay_array(
        image,
        np.zeros((grid, grid)),
        alpha=0.0,
        regulator=params,
        patch_size=patch,
        ellipse_colour=(255, 0, 0),
    )
    red = (out == [255, 0, 0]).all(axis=-1)
    # 2-sigma boundary: x = 40 +- 2*1.5*8 = 16 or 64 on row y = 32; y = 32 +- 16 on column x = 40.
    for y, x in [(32, 64), (32, 16), (48, 40), (16, 40)]:
        assert red[y - 1 : y + 1, x - 1 : x + 1].any(), (y, x)
    assert red[32, 40]  # centre cross
    assert not red[5, 5] and not red[75, 75] and not red[32, 70]  # far away: untouched
    assert not red[40, 54]  # inside the ellipse, off the cross

    rotated = viz.draw_regulator(
        image, [5.0, 4.0, 2.0, 1.2, 1.5], patch, colour=(0, 255, 0), thickness=1
    )
    green = (rotated == [0, 255, 0]).all(axis=-1)
    ys, xs = np.nonzero(green)
    # Every drawn pixel (outside the centre cross) lies close to Mahalanobis distance 2.
    cov_inv = np.linalg.inv(np.array([[2.0, 1.2], [1.2, 1.5]]))
    d = np.stack([(xs + 0.5) / patch - 5.0, (ys + 0.5) / patch - 4.0], axis=1)
    maha = np.sqrt(np.einsum("ni,ij,nj->n", d, cov_inv, d))
    on_cross = (np.abs(xs + 0.5 - 40) <= 1.5) | (np.abs(ys + 0.5 - 32) <= 1.5)
    assert np.all(np.abs(maha[~on_cross] - 2.0) < 0.15)
    with pytest.raises(ValueError, match="positive definite"):
        viz.draw_regulator(image, [5, 4, 1.0, 2.0, 1.0], patch)
    # Flat-top (beta last) and mixture states start with the same 5 moments: the same ellipse.
    moments = [5.0, 4.0, 2.0, 1.2, 1.5]
    for state in (moments + [2.5], moments + [0.3] + [1.0] * 10):
        np.testing.assert_array_equal(
            viz.draw_regulator(image, state, patch, colour=(0, 255, 0), thickness=1), rotated)


def test_heatmap_overlay_and_regulator_evolution_figures(tmp_path):
    rng = np.random.default_rng(0)
    grid, patch = 6, 10
    image = rng.integers(0, 256, (grid * patch, grid * patch, 3), dtype=np.uint8)
    weights = rng.random((grid, grid))
    reg = np.array([3.0, 3.0, 1.0, 0.2, 0.8])
    _assert_png(
        viz.heatmap_overlay(
            image,
            weights,
            tmp_path / "h.png",
            regulator=reg,
            patch_size=patch,
            title="Image 1: p=0.83",
            normalisation="percentile",
            smooth_sigma=0.5,
        )
    )
    with pytest.raises(ValueError, match="patch_size"):
        viz.overlay_array(image, weights, patch_size=7)
    by_epoch = {e: reg * [1, 1, 5 / e, 0, 5 / e] + [0, 0, 0.1, 0, 0.1] for e in (1, 32, 48, 60)}
    _assert_png(
        viz.regulator_evolution(image, by_epoch, tmp_path / "evo.png", patch),
        min_wh=(900, 250),
        max_wh=(2000, 600),
    )
    assert viz.evolution_epochs(range(1, 61)) == [1, 32, 48, 60]
    assert viz.evolution_epochs([1, 2, 3]) == [1, 3]


def test_photo_view_crops_the_letterbox_and_keeps_the_photo_aspect():
    # An 800x600 photo padded into 112 px (4x4 patches of 28): the photo is the 112x84 band at
    # rows 14..97 (letterbox by hand: scale 0.14, (112 - 84) // 2 = 14).
    weights = np.arange(16, dtype=np.float32).reshape(4, 4)
    pixels = np.zeros((112, 112, 3), np.uint8)
    pixels[14:98] = 200
    photo, heat = viz.photo_view(pixels, weights, 800, 600, "pad", max_side=400)
    assert photo.shape == (300, 400, 3) and heat.shape == (300, 400)
    assert photo.min() >= 190  # no black letterbox left
    # Row r of the display is input row 14 + r * 84 / 300 (nearest): patch row of that input row.
    for r in (0, 50, 150, 299):
        expected = weights[int((14 + (r + 0.5) * 84 / 300) // 28)]
        np.testing.assert_array_equal(heat[r, [0, 120, 220, 399]], expected)


def test_photo_view_stretch_maps_the_whole_grid():
    weights = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)
    photo, heat = viz.photo_view(np.zeros((56, 56, 3), np.uint8), weights, 300, 100, "stretch")
    assert photo.shape == (100, 300, 3)
    np.testing.assert_array_equal(heat[[0, 0, 99, 99], [0, 299, 0, 299]], [0.0, 1.0, 2.0, 3.0])


def test_clinician_figure_states_probability_threshold_and_warning(tmp_path):
    photo = np.full((60, 160, 3), 128, np.uint8)
    heat = np.linspace(0.1, 0.9, 60 * 160).reshape(60, 160)
    fig = viz.clinician_figure(photo, heat, 0.731, 0.5, warning="synthetic only", title="a.jpg")
    ax, bar = fig.axes
    assert "P(CIN2+) = 0.731 >= threshold 0.500" in ax.get_title()
    assert viz.CLASS_NAMES[1] in ax.get_title() and ax.get_title().startswith("a.jpg")
    assert ax.get_xlabel() == "synthetic only"
    shown = ax.get_images()
    assert shown[0].get_array().shape[:2] == (60, 160)  # the photograph's own aspect
    assert (shown[1].norm.vmin, shown[1].norm.vmax) == pytest.approx((0.1, 0.9))  # weight units
    assert "Patch weight" in bar.get_ylabel()
    below = viz.clinician_figure(photo, heat, 0.2, 0.5)
    assert "0.200 < threshold 0.500" in below.axes[0].get_title()
    assert viz.CLASS_NAMES[0] in below.axes[0].get_title()
    _assert_png(viz.save_figure(fig, tmp_path / "c.png"), min_wh=(300, 150))


def test_tsne_of_identical_features_draws_nothing_instead_of_crashing(tmp_path):
    # scikit-learn's t-SNE segfaulted on these (a dead VGG16 baseline gave them).
    out = viz.tsne(np.ones((12, 5)), np.arange(12) % 2, tmp_path / "t.png")
    assert out is None and not (tmp_path / "t.png").exists()

"""Metrics against scikit-learn and hand computations."""

import numpy as np
import pytest
from sklearn import metrics as skm

from jaxcerv.evaluation import metrics


def _random_case(seed: int, n: int = 200):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    # Informative but noisy scores, rounded so that ties occur.
    probs = np.clip(0.5 + 0.25 * (labels - 0.5) + 0.25 * rng.standard_normal(n), 0, 1).round(2)
    return labels, probs


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.71])
def test_binary_metrics_match_sklearn(seed, threshold):
    labels, probs = _random_case(seed)
    m = metrics.binary_metrics(labels, probs, threshold)
    pred = (probs >= threshold).astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(labels, pred, zero_division=0))
    assert m["precision"] == pytest.approx(skm.precision_score(labels, pred, zero_division=0))
    assert m["recall"] == pytest.approx(skm.recall_score(labels, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(labels, pred, pos_label=0))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, probs))
    assert (m["threshold"], m["n"], m["n_pos"]) == (threshold, labels.size, labels.sum())


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_eer_matches_interpolated_sklearn_roc(seed):
    labels, probs = _random_case(seed, n=150)
    fpr, tpr, _ = skm.roc_curve(labels, probs, drop_intermediate=False)
    fnr = 1 - tpr
    # Independent crossing search: dense interpolation of both error curves along the ROC path.
    s = np.linspace(0, len(fpr) - 1, 200_001)
    f = np.interp(s, np.arange(len(fpr)), fpr)
    g = np.interp(s, np.arange(len(fpr)), fnr)
    k = np.argmin(np.abs(f - g))
    m = metrics.binary_metrics(labels, probs, 0.5)
    assert m["one_minus_eer"] == pytest.approx(1 - f[k], abs=1e-4)
    assert m["one_minus_eer"] == pytest.approx(1 - g[k], abs=1e-4)


def test_roc_points_match_sklearn():
    labels, probs = _random_case(7)
    fpr, tpr, thr = metrics.roc_points(labels, probs)
    s_fpr, s_tpr, s_thr = skm.roc_curve(labels, probs, drop_intermediate=False)
    np.testing.assert_allclose(fpr, s_fpr)
    np.testing.assert_allclose(tpr, s_tpr)
    np.testing.assert_allclose(thr[1:], s_thr[1:])


def test_ece_hand_computed():
    labels = np.array([0, 1, 1, 0, 1, 1, 0])
    probs = np.array([0.05, 0.15, 0.12, 0.55, 0.58, 0.95, 1.0])
    # Bins: [0,.1): {0.05 -> y 0}; [.1,.2): {.15,.12 -> y 1,1}; [.5,.6): {.55,.58 -> y 0,1};
    # [.9,1]: {.95,1.0 -> y 1,0}.
    expected = (
        1 * abs(0 - 0.05)
        + 2 * abs(1 - (0.15 + 0.12) / 2)
        + 2 * abs(0.5 - (0.55 + 0.58) / 2)
        + 2 * abs(0.5 - (0.95 + 1.0) / 2)
    ) / 7
    assert metrics.binary_metrics(labels, probs, 0.5)["ece"] == pytest.approx(expected)


def test_one_class_raises_with_message():
    with pytest.raises(metrics.MetricsError, match=r"only label 0 \(12 images\)") as err:
        metrics.binary_metrics(np.zeros(12, int), np.linspace(0, 1, 12), 0.5, split="test")
    assert "ROC AUC needs both classes; the test split" in str(err.value)
    with pytest.raises(metrics.MetricsError, match="only label 1"):
        metrics.choose_threshold(np.ones(5, int), np.linspace(0, 1, 5))
    assert issubclass(metrics.MetricsError, ValueError)


def test_invalid_inputs_raise():
    with pytest.raises(metrics.MetricsError, match="NaN"):
        metrics.binary_metrics([0, 1], [0.2, np.nan], 0.5)
    with pytest.raises(metrics.MetricsError, match="differ in length"):
        metrics.binary_metrics([0, 1, 1], [0.2, 0.3], 0.5)
    with pytest.raises(metrics.MetricsError, match=r"\[0, 1\]"):
        metrics.binary_metrics([0, 1], [0.2, 1.3], 0.5)


def test_perfect_classifier():
    labels = np.array([0, 0, 0, 1, 1])
    probs = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    m = metrics.binary_metrics(labels, probs, 0.5)
    for key in (
        "accuracy",
        "balanced_accuracy",
        "f1",
        "precision",
        "recall",
        "specificity",
        "roc_auc",
        "one_minus_eer",
    ):
        assert m[key] == 1.0, key
    t = metrics.choose_threshold(labels, probs)
    assert 0.3 < t < 0.8 and t == pytest.approx(0.55)


def test_all_predicted_negative_gives_zero_not_nan():
    labels = np.array([0, 1, 0, 1])
    probs = np.array([0.1, 0.4, 0.2, 0.3])
    m = metrics.binary_metrics(labels, probs, 0.9)
    assert m["precision"] == 0.0 and m["f1"] == 0.0 and m["recall"] == 0.0
    assert m["specificity"] == 1.0 and m["balanced_accuracy"] == 0.5
    assert all(np.isfinite(v) for v in m.values())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_choose_threshold_optimal_on_validation(seed):
    labels, probs = _random_case(seed)
    fpr, tpr, _ = skm.roc_curve(labels, probs, drop_intermediate=False)
    t = metrics.choose_threshold(labels, probs, "youden")
    pred = probs >= t
    j = skm.recall_score(labels, pred) + skm.recall_score(labels, pred, pos_label=0) - 1
    assert j == pytest.approx(np.max(tpr - fpr))
    assert metrics.choose_threshold(labels, probs, "balanced_accuracy") == t
    # The midpoint never coincides with an observed score, so the partition is unambiguous.
    assert not np.any(np.isclose(probs, t))

    t_eer = metrics.choose_threshold(labels, probs, "eer")
    pred = probs >= t_eer
    fpr_t = 1 - skm.recall_score(labels, pred, pos_label=0)
    gap = abs(fpr_t - (1 - skm.recall_score(labels, pred)))
    assert gap == pytest.approx(np.min(np.abs(fpr - (1 - tpr))))
    with pytest.raises(metrics.MetricsError, match="unknown criterion"):
        metrics.choose_threshold(labels, probs, "f1")


def test_choose_threshold_breaks_ties_towards_the_higher_cut():
    """Cuts 0.4 and 0.2 both give J = 0.5 (by hand): the higher wins, and the threshold is the
    midpoint down to the next score, 0.35 (a lowest-cut rule would give 0.15; a fixed 0.5 would
    call every image negative)."""
    labels, probs = np.array([0, 1, 0, 1]), np.array([0.1, 0.2, 0.3, 0.4])
    assert metrics.choose_threshold(labels, probs, "youden") == pytest.approx(0.35)
    # Shuffling the images pairs each score with its own label still: the same cut.
    perm = np.array([2, 0, 3, 1])
    assert metrics.choose_threshold(labels[perm], probs[perm]) == pytest.approx(0.35)


def _sessions(n_sessions: int, per_session: int, seed: int):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_sessions), per_session)
    labels = np.repeat(rng.integers(0, 2, n_sessions), per_session)  # label is per session
    probs = np.clip(0.5 + 0.3 * (labels - 0.5) + 0.25 * rng.standard_normal(labels.size), 0, 1)
    return labels, probs, groups.astype(str)


def test_bootstrap_contains_point_estimate_and_shrinks():
    small = _sessions(30, 2, seed=0)
    large = _sessions(600, 2, seed=0)
    widths = []
    for labels, probs, groups in (small, large):
        point = metrics.binary_metrics(labels, probs, 0.5)
        res = metrics.bootstrap_ci(labels, probs, 0.5, groups, n_boot=200, seed=1)
        assert res["n_boot"] == 200 and res["alpha"] == 0.05
        for name in ("balanced_accuracy", "roc_auc", "f1", "recall", "specificity"):
            lo, hi = res["ci"][name]
            assert lo <= point[name] <= hi, name
        widths.append(res["ci"]["roc_auc"][1] - res["ci"]["roc_auc"][0])
    assert widths[1] < widths[0] / 2


def test_bootstrap_resamples_sessions_not_images():
    labels, probs, groups = _sessions(40, 1, seed=3)
    res = metrics.bootstrap_ci(labels, probs, 0.5, groups, n_boot=50, seed=0)
    assert res["n_units"] == 40
    # Duplicating one session's images adds images, not resampling units.
    dup = np.r_[labels, labels[:1].repeat(5)], np.r_[probs, probs[:1].repeat(5)]
    res_dup = metrics.bootstrap_ci(*dup, 0.5, np.r_[groups, groups[:1].repeat(5)], n_boot=50)
    assert res_dup["n_units"] == 40
    # Images of a session travel together: with one negative and one positive session, every
    # valid resample is {a, b} (image-level resampling would give AUCs other than the full 0.75).
    two = metrics.bootstrap_ci(
        [0, 0, 1, 1], [0.2, 0.6, 0.4, 0.9], 0.5, ["a", "a", "b", "b"], n_boot=30, seed=0
    )
    assert two["ci"]["roc_auc"] == (0.75, 0.75)  # both sessions must be drawn: the full data
    assert two["n_redrawn"] > 0
    # The same with the sessions' images interleaved: images pair with their session by
    # group label, not by position (contiguous blocks would make {0, 1} a mixed session).
    mixed = metrics.bootstrap_ci(
        [0, 1, 0, 1], [0.2, 0.4, 0.6, 0.9], 0.5, ["a", "b", "a", "b"], n_boot=30, seed=0
    )
    assert mixed["ci"]["roc_auc"] == (0.75, 0.75) and mixed["n_redrawn"] > 0


def test_bootstrap_redraw_cap():
    labels = np.r_[np.zeros(49, int), 1]
    probs = np.linspace(0, 1, 50)
    with pytest.raises(metrics.MetricsError, match="lacked a class"):
        metrics.bootstrap_ci(labels, probs, 0.5, np.arange(50), n_boot=100, max_redraws=5)


def test_summarize_folds():
    folds = [
        {"roc_auc": 0.8, "f1": 0.5, "n": 10, "name": "x"},
        {"roc_auc": 0.9, "f1": 0.7, "n": 12, "name": "y"},
        {"roc_auc": 0.7, "f1": 0.6, "n": 11, "name": "z"},
    ]
    s = metrics.summarize_folds(folds)
    assert s["mean"]["roc_auc"] == pytest.approx(0.8)
    assert s["sd"]["roc_auc"] == pytest.approx(np.std([0.8, 0.9, 0.7], ddof=1))
    assert s["mean"]["n"] == pytest.approx(11)
    assert "name" not in s["mean"]
    with pytest.raises(metrics.MetricsError, match="at least 2 folds"):
        metrics.summarize_folds(folds[:1])
    with pytest.raises(metrics.MetricsError, match="f1"):
        metrics.summarize_folds([folds[0], {"roc_auc": 0.5, "n": 3}])


def test_pointing_game_hand_case():
    w = np.zeros((4, 5, 5))
    les = np.zeros((4, 5, 5), np.uint8)
    w[0, 1, 1] = 1.0  # on the lesion -> hit
    les[0, 1, 1] = 1
    w[1, 0, 0] = 1.0  # lesion at (1, 1): Chebyshev 1 -> hit with tolerance 1, miss with 0
    les[1, 1, 1] = 1
    w[2, 4, 4] = 1.0  # lesion at (1, 2): Chebyshev 3 -> miss
    les[2, 1, 2] = 1
    w[3, 2, 2] = 1.0  # no lesion -> not counted
    assert metrics.pointing_game(w, les, tolerance=1) == pytest.approx(2 / 3)
    assert metrics.pointing_game(w, les, tolerance=0) == pytest.approx(1 / 3)
    assert metrics.pointing_game(w, les, tolerance=3) == pytest.approx(1.0)
    with pytest.raises(metrics.MetricsError, match="lesion"):
        metrics.pointing_game(w[3:], les[3:])


def test_mass_in_ellipse_hand_count():
    grid = 6
    w = np.arange(grid * grid, dtype=float).reshape(1, grid, grid) + 1.0
    # Axis-aligned ellipse centred at patch (row 2, col 3) centre = (h 3.5, v 2.5); sigma_h = 1,
    # sigma_v = 0.5, so 2-sigma reaches +-2 patches horizontally and +-1 vertically.
    params = np.array([[3.5, 2.5, 1.0, 0.0, 0.25]])
    inside = np.zeros((grid, grid), bool)
    for i in range(grid):
        for j in range(grid):
            dh, dv = (j + 0.5) - 3.5, (i + 0.5) - 2.5
            inside[i, j] = dh**2 / 1.0 + dv**2 / 0.25 <= 4.0
    # Hand check of the membership itself: row 2 cols 1..5, rows 1 and 3 col 3 only.
    assert sorted(zip(*np.nonzero(inside), strict=True)) == [
        (1, 3),
        (2, 1),
        (2, 2),
        (2, 3),
        (2, 4),
        (2, 5),
        (3, 3),
    ]
    expected = w[0][inside].sum() / w.sum()
    assert metrics.mass_in_ellipse(w, params) == pytest.approx(expected)

    # Rotated covariance, compared with scipy's Mahalanobis distance.
    from scipy.spatial.distance import mahalanobis

    params = np.array([[2.7, 3.1, 2.0, 1.2, 1.5]])
    cov = np.array([[2.0, 1.2], [1.2, 1.5]])
    vi = np.linalg.inv(cov)
    mask = np.array(
        [
            [mahalanobis([j + 0.5, i + 0.5], [2.7, 3.1], vi) <= 1.5 for j in range(grid)]
            for i in range(grid)
        ]
    )
    assert metrics.mass_in_ellipse(w, params, n_sigma=1.5) == pytest.approx(
        w[0][mask].sum() / w.sum()
    )
    with pytest.raises(metrics.MetricsError, match="positive definite"):
        metrics.mass_in_ellipse(w, np.array([[1, 1, 1.0, 2.0, 1.0]]))


def test_centre_error():
    a = np.array([[0.0, 0.0, 1, 0, 1], [1.0, 1.0, 1, 0, 1]])
    b = np.array([[3.0, 4.0, 2, 0, 2], [1.0, 1.0, 5, 0, 5]])
    assert metrics.centre_error(a, b) == pytest.approx(2.5)


# ------------------------------------------------------------------ lesion-level explanation


def _cervix_oracle(params: np.ndarray, grid: int, n_sigma: float = 2.0) -> np.ndarray:
    """(N, grid, grid) patch centres inside each ellipse, by scipy's Mahalanobis distance."""
    from scipy.spatial.distance import mahalanobis

    out = np.zeros((len(params), grid, grid), bool)
    for k, p in enumerate(params):
        vi = np.linalg.inv([[p[2], p[3]], [p[3], p[4]]])
        for i in range(grid):
            for j in range(grid):
                out[k, i, j] = mahalanobis([j + 0.5, i + 0.5], p[:2], vi) <= n_sigma
    return out


def _explanation_case(seed: int, n: int = 30, grid: int = 7):
    """Random maps with ties, lesion blobs near random cervix ellipses, labels and sessions."""
    rng = np.random.default_rng(seed)
    weights = rng.integers(0, 6, size=(n, grid, grid)) / 5.0  # few levels: many ties
    labels = rng.integers(0, 2, size=n)
    lesion = (rng.uniform(size=(n, grid, grid)) < 0.15) & (labels[:, None, None] == 1)
    lesion[3] = False  # a CIN2+ image without a lesion patch, if image 3 is CIN2+
    theta = rng.uniform(0, np.pi, n)
    a, b = rng.uniform(1.0, 2.0, n), rng.uniform(0.6, 1.5, n)
    c, s = np.cos(theta), np.sin(theta)
    params = np.stack(
        [rng.uniform(2.5, 4.5, n), rng.uniform(2.5, 4.5, n),
         a * c * c + b * s * s, (a - b) * s * c, a * s * s + b * c * c], axis=1,
    )
    sessions = np.repeat(np.arange(n // 2), 2)[:n].astype(str)
    return weights, lesion.astype(np.uint8), params, labels, sessions


def test_pointing_hits_hand_case():
    w = np.zeros((5, 4, 4))
    les = np.zeros((5, 4, 4), np.uint8)
    labels = np.array([1, 1, 0, 1, 1])
    w[0, 1, 2] = 1.0  # on its lesion -> 1
    les[0, 1, 2] = 1
    w[1, 0, 0] = 1.0  # lesion one patch away -> 0 at tolerance 0, 1 at tolerance 1
    les[1, 1, 1] = 1
    w[2, 2, 2] = 1.0  # a normal image -> not used, even with a lesion mask
    les[2, 2, 2] = 1
    w[3, 3, 3] = 1.0  # CIN2+ without a lesion patch -> not used
    les[4, 0, 0] = 1  # flat map: the tie goes to (0, 0), the first patch -> 1
    hits = metrics.pointing_hits(w, les, labels)
    np.testing.assert_array_equal(hits, [1.0, 0.0, np.nan, np.nan, 1.0])
    np.testing.assert_array_equal(
        metrics.pointing_hits(w, les, labels, tolerance=1), [1.0, 1.0, np.nan, np.nan, 1.0]
    )
    with pytest.raises(metrics.MetricsError, match="labels"):
        metrics.pointing_hits(w, les, [1, 1, 0, 1, 2])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lesion_auc_matches_sklearn_per_image(seed):
    w, les, params, labels, _ = _explanation_case(seed)
    cervix = _cervix_oracle(params, w.shape[1])
    got = metrics.lesion_auc(w, les, params, labels)
    used = 0
    for k in range(len(w)):
        pos = les[k].astype(bool)
        neg = cervix[k] & ~pos
        if labels[k] != 1 or not pos.any() or not neg.any():
            assert np.isnan(got[k]), k
            continue
        sel = pos | neg
        expected = skm.roc_auc_score(pos[sel], w[k][sel])
        assert got[k] == pytest.approx(expected), k
        used += 1
    assert used >= 8  # the case exercises the comparison, not only the NaN branch


def test_lesion_auc_hand_case():
    # A 3x3 grid whose cervix ellipse is a wide circle holding every patch: lesion patch
    # weights (0.9, 0.5) against the other seven (0.5 once, 0.1 six times): the 0.9 beats all 7,
    # the 0.5 beats 6 and ties 1, so AUC = (7 + 6.5) / 14.
    w = np.full((1, 3, 3), 0.1)
    les = np.zeros((1, 3, 3), np.uint8)
    w[0, 0, 0], w[0, 1, 1], w[0, 2, 2] = 0.9, 0.5, 0.5
    les[0, 0, 0] = les[0, 1, 1] = 1
    params = np.array([[1.5, 1.5, 4.0, 0.0, 4.0]])
    assert metrics.lesion_auc(w, les, params, [1])[0] == pytest.approx(13.5 / 14)


@pytest.mark.parametrize("seed", [0, 1])
def test_mass_in_cervix_per_image(seed):
    w, _, params, _, _ = _explanation_case(seed)
    w = w + 0.01  # no all-zero map
    cervix = _cervix_oracle(params, w.shape[1])
    expected = [(wk * ck).sum() / wk.sum() for wk, ck in zip(w, cervix, strict=True)]
    np.testing.assert_allclose(metrics.mass_in_cervix(w, params), expected)
    assert np.mean(expected) == pytest.approx(metrics.mass_in_ellipse(w, params))


def test_session_bootstrap_mean_resamples_sessions():
    # Two sessions: one of 9 images at 1.0, one of 1 image at 0.0 (and a NaN, not used). A
    # session-level resample gives means 1.0 ({a, a}), 0.9 ({a, b}) or 0.0 ({b, b}) only.
    values = np.r_[np.ones(9), 0.0, np.nan]
    sessions = np.array(["a"] * 9 + ["b", "c"])
    res = metrics.session_bootstrap_mean(values, sessions, n_boot=400, seed=0)
    assert res["value"] == pytest.approx(0.9)
    assert (res["n_images"], res["n_sessions"]) == (10, 2)
    assert res["ci95"] == [0.0, 1.0]  # both extremes have probability 1/4 each
    # Within-session values never mix: every session constant -> bootstrap means are
    # averages of whole sessions, so a single session gives a zero-width interval.
    one = metrics.session_bootstrap_mean([0.3, 0.5], ["s", "s"], n_boot=50)
    assert one["ci95"] == [pytest.approx(0.4), pytest.approx(0.4)]
    empty = metrics.session_bootstrap_mean([np.nan, np.nan], ["s", "t"], n_boot=10)
    assert empty == {"value": None, "ci95": None, "n_images": 0, "n_sessions": 0}


def test_session_bootstrap_interval_shrinks_with_sessions():
    rng = np.random.default_rng(0)
    widths = []
    for n in (20, 500):
        res = metrics.session_bootstrap_mean(rng.uniform(size=n), np.arange(n), n_boot=300)
        assert res["ci95"][0] <= res["value"] <= res["ci95"][1]
        widths.append(res["ci95"][1] - res["ci95"][0])
    # The interval width scales as 1/sqrt(sessions): 5x narrower for 25x the sessions.
    assert widths[1] < widths[0] / 3


def test_explanation_summary_uses_the_documented_images():
    w, les, params, labels, sessions = _explanation_case(4, n=40)
    w = w + 0.01
    out = metrics.explanation_summary(w, les, params, labels, sessions, n_boot=100, seed=0)
    assert set(out) == {"pointing_game", "lesion_auc", "mass_in_cervix", "mass_in_cervix_normal"}
    cervix = _cervix_oracle(params, w.shape[1])
    mass = np.array([(wk * ck).sum() / wk.sum() for wk, ck in zip(w, cervix, strict=True)])
    has_lesion = les.reshape(len(w), -1).any(axis=1)
    # Which images each metric reads, counted independently.
    assert out["pointing_game"]["n_images"] == int(np.sum((labels == 1) & has_lesion))
    assert out["mass_in_cervix"]["n_images"] == len(w)
    assert out["mass_in_cervix_normal"]["n_images"] == int(np.sum(labels == 0))
    assert out["mass_in_cervix"]["value"] == pytest.approx(mass.mean())
    assert out["mass_in_cervix_normal"]["value"] == pytest.approx(mass[labels == 0].mean())
    hits = [
        float(les[k].flat[int(np.argmax(w[k]))] == 1)
        for k in range(len(w))
        if labels[k] == 1 and has_lesion[k]
    ]
    assert out["pointing_game"]["value"] == pytest.approx(np.mean(hits))
    for m in out.values():
        lo, hi = m["ci95"]
        assert lo <= m["value"] <= hi and m["images"]
    # No CIN2+ image at all: the lesion metrics say so instead of failing the evaluation.
    none = metrics.explanation_summary(
        w, les * 0, params, np.zeros(len(w), int), sessions, n_boot=10
    )
    assert none["pointing_game"]["value"] is None and none["lesion_auc"]["n_images"] == 0
    assert none["mass_in_cervix_normal"]["n_images"] == len(w)


def test_flat_map_fraction_counts_maps_without_contrast():
    """Hand cases: all weights 1.0 (a saturated sigmoid) and all 0 are flat, an ulp of float32
    below 1 in one patch is flat (min-max would divide by rounding noise), a real map is not."""
    maps = np.full((5, 3, 3), 0.3)
    maps[0] = 1.0
    maps[1] = 0.0
    maps[2] = 1.0
    maps[2, 1, 1] = np.float32(1.0) - np.float32(6e-8)
    maps[3, 0, 0] = 0.9
    maps[4] = np.arange(9).reshape(3, 3) / 8
    assert metrics.flat_map_fraction(maps) == 3 / 5


def test_epoch_line_warns_about_a_collapsed_classifier_and_flat_heatmaps():
    from jaxcerv.training.train import health_notes

    assert health_notes({"val_logit_sd": 0.5, "val_flat_heatmaps": 0.1}) == ""
    assert health_notes({}) == ""  # a whole-image model logs neither number
    text = health_notes({"val_logit_sd": 1e-7, "val_flat_heatmaps": 1.0})
    assert "same for every image" in text and "train.learning_rate" in text
    assert "flat in 100% of images" in text and "regulator.normalise=logits" in text
    dead = health_notes({"val_dead_features": 1.0, "val_logit_sd": 0.0})
    assert "dead encoder" in dead and "train.learning_rate" in dead
    assert "same for every image (features" not in dead  # one note, not two
    # the advice follows the run's settings: normalise=logits is already on there
    from jaxcerv.configs import default
    reg = default.get_config().regulator
    reg.loss, reg.logit_decay = "mass_outside", 0.0
    flat = health_notes({"val_flat_heatmaps": 0.9}, reg)
    assert "regulator.logit_decay > 0" in flat and "normalise=logits" not in flat
    reg.loss, reg.logit_decay = "softmax_outside", 0.001
    flat = health_notes({"val_flat_heatmaps": 0.9}, reg)
    assert "a larger regulator.logit_decay (now 0.001)" in flat


def test_dead_encoder_rule_on_hand_built_features():
    """Constant columns (0, or a LayerNorm's bias) are dead; varying columns are alive; the rule
    fires at DEAD_FRACTION of the columns, not before."""
    rng = np.random.default_rng(0)
    alive = rng.standard_normal((16, 100))
    assert metrics.dead_feature_fraction(alive) == 0.0
    assert not metrics.is_dead_encoder(alive)
    zeros = np.zeros((16, 100))
    assert metrics.dead_feature_fraction(zeros) == 1.0 and metrics.is_dead_encoder(zeros)
    ln_bias = np.tile(rng.standard_normal(100), (16, 1))  # LayerNorm of a zero vector
    assert metrics.is_dead_encoder(ln_bias)
    half = alive.copy()
    half[:, :50] = 0.0
    assert metrics.dead_feature_fraction(half) == 0.5 and not metrics.is_dead_encoder(half)
    with pytest.raises(metrics.MetricsError, match="N >= 2"):
        metrics.dead_feature_fraction(np.zeros((1, 4)))


@pytest.mark.parametrize("feature_norm", [False, True])
def test_dead_encoder_rule_on_a_killed_model(feature_norm):
    """A patch model whose last conv bias is very negative (every ReLU 0) is flagged; the same
    model with its fresh parameters is not."""
    import jax

    from jaxcerv.model import networks as model_lib

    m = model_lib.PatchWiseModel(patch_size=8, conv_features=(4, 6, 8), weight_hidden=(16, 8),
                                 classifier_hidden=(8, 4), feature_norm=feature_norm,
                                 remat=False, conv_impl="xla")
    img = np.random.default_rng(1).integers(0, 255, size=(6, 24, 24, 3), dtype=np.uint8)
    params = m.init(jax.random.PRNGKey(0), img)["params"]
    out = m.apply({"params": params}, img)
    assert not metrics.is_dead_encoder(out.features)
    last = f"Conv_{len(m.conv_features) - 1}"
    killed = jax.tree.map(lambda x: x, params)
    killed["encoder"][last]["bias"] = params["encoder"][last]["bias"] - 1e4
    out = m.apply({"params": killed}, img)
    assert metrics.dead_feature_fraction(out.features) == 1.0
    assert metrics.is_dead_encoder(out.features)




# ---------------------------------------------------------------------------------------------
# Real expert regions: per-patch region fractions, some outlines unusable.


def _region_case(seed: int, n: int = 30, grid: int = 6):
    rng = np.random.default_rng(seed)
    frac = np.zeros((n, grid, grid))
    for k in range(n):
        r0, c0 = rng.integers(0, grid - 2, size=2)
        frac[k, r0:r0 + rng.integers(1, 4), c0:c0 + rng.integers(1, 4)] = rng.uniform(
            0.2, 1.0, size=1)
    frac[::7] = 0.0  # empty outlines: no acetowhite marked
    weights = rng.uniform(size=(n, grid, grid)) + 0.8 * frac
    weights[3] = 0.5  # a flat map: ties everywhere
    usable = rng.uniform(size=n) > 0.2
    sessions = np.repeat(np.arange(n // 3), 3).astype(str)
    return weights, frac, usable, sessions


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_region_auc_matches_sklearn_per_image(seed):
    w, frac, usable, _ = _region_case(seed)
    got = metrics.region_per_image(w, frac, usable)["region_auc"]
    used = 0
    for k in range(len(w)):
        region = frac[k] >= metrics.REGION_CUT
        if not usable[k] or not region.any() or region.all():
            assert np.isnan(got[k]), k
            continue
        assert got[k] == pytest.approx(skm.roc_auc_score(region.ravel(), w[k].ravel())), k
        used += 1
    assert used >= 10


def test_region_metrics_hand_case():
    # 1 image, 3x3: region fractions 1.0 at (0, 0), 0.6 at (0, 1), 0.3 at (1, 1) (below the cut).
    frac = np.zeros((1, 3, 3))
    frac[0, 0, 0], frac[0, 0, 1], frac[0, 1, 1] = 1.0, 0.6, 0.3
    w = np.full((1, 3, 3), 0.1)
    w[0, 1, 1] = 0.9  # top patch: not region at the cut, but adjacent to (0, 0) and (0, 1)
    w[0, 0, 0] = 0.5
    out = metrics.region_per_image(w, frac, [True])
    # Region {0.5, 0.1} against 7 others {0.9, 0.1 x 6}: 0.5 beats 6; 0.1 ties 6 -> 3.
    assert out["region_auc"][0] == pytest.approx((6 + 3) / 14)
    # Mass is area-weighted: (0.5 * 1 + 0.1 * 0.6 + 0.9 * 0.3) / total.
    assert out["mass_in_region"][0] == pytest.approx((0.5 + 0.06 + 0.27) / w.sum())
    assert out["pointing_game"][0] == 0.0
    assert out["pointing_game_within_1_patch"][0] == 1.0
    # Ranked only within the photograph: leaving out two 0.1 patches, 0.1 ties 4 -> 2, 0.5 beats 4.
    within = np.ones((1, 3, 3), bool)
    within[0, 2, 1:] = False
    auc = metrics.region_per_image(w, frac, [True], within=within)["region_auc"][0]
    assert auc == pytest.approx((4 + 2) / 10)
    unusable = metrics.region_per_image(w, frac, [False])
    assert all(np.isnan(v[0]) for v in unusable.values())
    with pytest.raises(metrics.MetricsError, match="region fractions"):
        metrics.region_per_image(w, frac * 2, [True])


def test_pointing_game_is_top_patch_hits_pooled():
    w, frac, _, _ = _region_case(5)
    region = frac >= 0.5
    hits = metrics.top_patch_hits(w, region, np.ones(len(w), bool), tolerance=1)
    assert metrics.pointing_game(w, region, tolerance=1) == pytest.approx(np.nanmean(hits))


def test_region_summary_counts_masks_and_skips():
    w, frac, usable, sessions = _region_case(3)
    out = metrics.region_summary(w, frac, usable, sessions, n_boot=200, seed=0)
    marked = usable & (frac >= 0.5).reshape(len(w), -1).any(axis=1)
    assert out["masks"] == {"n_images": len(w), "n_usable": int(usable.sum()),
                            "n_unusable": int((~usable).sum()),
                            "n_with_region": int(marked.sum()), "cut": 0.5}
    for name in ("mass_in_region", "pointing_game", "pointing_game_within_1_patch"):
        assert out[name]["n_images"] == marked.sum()
        assert out[name]["n_skipped"] == len(w) - marked.sum()
    lo, hi = out["region_auc"]["ci95"]
    assert lo <= out["region_auc"]["value"] <= hi


def test_paired_mean_difference():
    sessions = np.array(["a", "a", "b", "c", "d"])
    a = np.array([0.9, 0.8, 0.7, 0.6, np.nan])
    b = np.array([0.5, 0.6, 0.6, 0.4, 0.3])
    out = metrics.paired_mean_difference(a, b, sessions, n_boot=500, seed=0)
    assert out["delta"] == pytest.approx(np.mean([0.4, 0.2, 0.1, 0.2]))
    assert (out["n_images"], out["n_sessions"]) == (4, 3)
    assert out["p_value"] == 0.0  # every paired difference is positive: no resample crosses 0
    same = metrics.paired_mean_difference(b, b, sessions, n_boot=50)
    assert same["delta"] == 0.0 and same["p_value"] == 1.0
    none = metrics.paired_mean_difference(a * np.nan, b, sessions, n_boot=50)
    assert none["delta"] is None

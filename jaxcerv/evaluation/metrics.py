"""Evaluation metrics: classification (Table 1 of the paper), session bootstrap, CV summary, and
explanation quality against synthetic ground truth.

Everything here is a pure numpy function so it runs on the host after JAX is done, and so the tests
can check it against scikit-learn and hand computations.

Conventions:
  * A prediction is positive (CIN2+) when ``prob >= threshold``.
  * Ratios with an empty denominator are 0 (precision with no predicted positives, F1 when precision
    and recall are both 0), as scikit-learn's ``zero_division=0``; sensitivity and specificity
    cannot have an empty denominator because both classes are required.
  * Metrics that need both classes raise :class:`MetricsError` instead of returning NaN, so that a
    degenerate split fails loudly rather than silently writing NaN into results.json.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from jaxcerv.model.tolerances import FLAT_ABS, FLAT_REL

THRESHOLD_CRITERIA = ("youden", "balanced_accuracy", "eer")

# Metric names whose bootstrap interval is meaningful (threshold/n/n_pos are not statistics).
CI_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "f1",
    "precision",
    "recall",
    "specificity",
    "roc_auc",
    "one_minus_eer",
    "ece",
)


class MetricsError(ValueError):
    """Raised when a metric is undefined for the given data (e.g. one class only)."""


def _check_binary(labels, probs, split: str = "evaluation") -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert inputs; both classes must be present (ROC-based metrics need them)."""
    y = np.asarray(labels).reshape(-1)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise MetricsError(f"labels ({y.size}) and probabilities ({p.size}) differ in length")
    if y.size == 0:
        raise MetricsError(f"the {split} split is empty")
    if not np.all(np.isin(y, (0, 1))):
        raise MetricsError(f"labels must be 0/1, got values {np.unique(y)[:10].tolist()}")
    if not np.all(np.isfinite(p)):
        raise MetricsError(f"{int(np.sum(~np.isfinite(p)))} probabilities are NaN or infinite")
    if p.min() < 0.0 or p.max() > 1.0:
        raise MetricsError(f"probabilities must lie in [0, 1], got [{p.min():.4g}, {p.max():.4g}]")
    y = y.astype(np.int64)
    present = np.unique(y)
    if present.size < 2:
        raise MetricsError(
            f"ROC AUC needs both classes; the {split} split has only label {int(present[0])} "
            f"({y.size} images)"
        )
    return y, p


def roc_points(labels, probs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve at every distinct score: ``(fpr, tpr, thresholds)``, starting at (0, 0).

    ``thresholds[k]`` is the score cut giving ``(fpr[k], tpr[k])`` under ``prob >= threshold``;
    the first is +inf (nothing predicted positive).
    """
    y, p = _check_binary(labels, probs)
    order = np.argsort(-p, kind="stable")
    p_sorted, y_sorted = p[order], y[order]
    # Last index of each run of equal scores: ties move the curve diagonally, as they should.
    ends = np.r_[np.flatnonzero(np.diff(p_sorted)), p_sorted.size - 1]
    tps = np.cumsum(y_sorted)[ends]
    fps = ends + 1 - tps
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return fpr, tpr, np.r_[np.inf, p_sorted[ends]]


def roc_auc(labels, probs) -> float:
    """Area under the ROC curve (trapezoid rule, ties count one half)."""
    fpr, tpr, _ = roc_points(labels, probs)
    return float(np.trapezoid(tpr, fpr))


def equal_error_rate(labels, probs) -> float:
    """Rate where FPR equals FNR, linearly interpolated between adjacent ROC points."""
    fpr, tpr, _ = roc_points(labels, probs)
    fnr = 1.0 - tpr
    diff = fpr - fnr  # -1 at the first point, +1 at the last, non-decreasing
    k = int(np.argmax(diff >= 0.0))
    if diff[k] == 0.0:
        return float(fpr[k])
    t = -diff[k - 1] / (diff[k] - diff[k - 1])
    return float(fpr[k - 1] + t * (fpr[k] - fpr[k - 1]))


def expected_calibration_error(labels, probs, n_bins: int = 10) -> float:
    """ECE of the positive-class probability over ``n_bins`` equal-width bins on [0, 1].

    Sum over non-empty bins of (bin share of images) * |fraction positive - mean probability|.
    Bins are half-open [a, b) except the last, which includes 1.0.
    """
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.digitize(p, edges[1:-1])
    sum_y = np.bincount(bins, weights=y, minlength=n_bins)
    sum_p = np.bincount(bins, weights=p, minlength=n_bins)
    # |mean_y - mean_p| * count / n == |sum_y - sum_p| / n; empty bins contribute 0.
    return float(np.abs(sum_y - sum_p).sum() / p.size)


def _safe_ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else 0.0


def binary_metrics(labels, probs, threshold: float, *, split: str = "evaluation") -> dict:
    """Table-1 metrics plus calibration at a fixed decision threshold.

    ``split`` only names the data in error messages. Returns floats for: accuracy,
    balanced_accuracy, f1, precision, recall (sensitivity), specificity, roc_auc, one_minus_eer,
    ece, threshold; ints for n, n_pos.
    """
    y, p = _check_binary(labels, probs, split)
    pred = p >= threshold
    pos = y == 1
    tp = int(np.sum(pred & pos))
    fp = int(np.sum(pred & ~pos))
    fn = int(np.sum(~pred & pos))
    tn = int(np.sum(~pred & ~pos))
    recall = tp / (tp + fn)
    specificity = tn / (tn + fp)
    precision = _safe_ratio(tp, tp + fp)
    return {
        "accuracy": (tp + tn) / y.size,
        "balanced_accuracy": 0.5 * (recall + specificity),
        "f1": _safe_ratio(2.0 * precision * recall, precision + recall),
        "precision": precision,
        "recall": recall,
        "specificity": specificity,
        "roc_auc": roc_auc(y, p),
        "one_minus_eer": 1.0 - equal_error_rate(y, p),
        "ece": expected_calibration_error(y, p),
        "threshold": float(threshold),
        "n": int(y.size),
        "n_pos": int(pos.sum()),
    }


def choose_threshold(labels, probs, criterion: str = "youden") -> float:
    """Pick a decision threshold on validation data (the caller applies it to test).

    ``youden`` maximises TPR - FPR; ``balanced_accuracy`` maximises (TPR + TNR) / 2, which is the
    same objective (J = 2 * BA - 1) and is accepted as a name for clarity; ``eer`` minimises
    |FPR - FNR|. Ties go to the highest threshold. The threshold returned is the midpoint between
    the chosen score and the next lower distinct score, so the validation partition is unchanged
    but test scores close to the cut are not decided by one validation image.
    """
    if criterion not in THRESHOLD_CRITERIA:
        raise MetricsError(f"unknown criterion {criterion!r}; expected one of {THRESHOLD_CRITERIA}")
    fpr, tpr, cuts = roc_points(labels, probs)
    fpr, tpr, cuts = fpr[1:], tpr[1:], cuts[1:]  # drop "nothing positive": it is never useful
    if criterion == "eer":
        k = int(np.argmin(np.abs(fpr - (1.0 - tpr))))
    else:
        k = int(np.argmax(tpr - fpr))
    if k + 1 < cuts.size:
        mid = 0.5 * (cuts[k] + cuts[k + 1])
        # Adjacent floats can have a midpoint equal to the lower one; keep the exact cut then.
        return float(mid) if mid > cuts[k + 1] else float(cuts[k])
    return float(cuts[k])


class SessionResampler:
    """The one session bootstrap: resamples of whole sessions (``groups``) with replacement.

    Images from one screening session are correlated, so the session is the resampling unit.
    Every interval in the package (a run's metrics, the explanation metrics, a suite's pooled
    rows and paired tests) draws here, so one seed gives one stream everywhere."""

    def __init__(self, groups) -> None:
        _, self.unit = np.unique(np.asarray(groups).reshape(-1), return_inverse=True)
        self.n_units = int(self.unit.max()) + 1 if self.unit.size else 0
        self.members = np.split(np.argsort(self.unit, kind="stable"),
                                np.cumsum(np.bincount(self.unit))[:-1])
        self.redrawn = 0

    def draws(self, n_boot: int, seed: int = 0, *, labels=None, max_redraws: int | None = None):
        """Yield ``n_boot`` arrays of session indices. With ``labels``, a resample lacking a
        class is redrawn (the metrics are undefined there), counted in ``redrawn`` and capped at
        ``max_redraws`` (default ``10 * n_boot``) to fail loudly on hopeless data."""
        rng = np.random.default_rng(seed)
        if labels is not None:
            y = np.asarray(labels).reshape(-1)
            unit_pos = np.bincount(self.unit, weights=y, minlength=self.n_units)
            unit_size = np.bincount(self.unit, minlength=self.n_units)
        cap = 10 * n_boot if max_redraws is None else max_redraws
        b = 0
        while b < n_boot:
            draw = rng.integers(0, self.n_units, size=self.n_units)
            if labels is not None:
                n_pos = unit_pos[draw].sum()
                if n_pos == 0 or n_pos == unit_size[draw].sum():
                    self.redrawn += 1
                    if self.redrawn > cap:
                        raise MetricsError(
                            f"more than {cap} bootstrap resamples lacked a class; too few "
                            f"sessions contain both labels ({self.n_units} sessions, "
                            f"{int(y.sum())} positive images)"
                        )
                    continue
            b += 1
            yield draw

    def images(self, draw: np.ndarray) -> np.ndarray:
        """The image indices of a resample of sessions."""
        return np.concatenate([self.members[u] for u in draw])

    def image_draws(self, n_boot: int, seed: int = 0, *, labels=None,
                    max_redraws: int | None = None):
        """As ``draws``, yielding image indices."""
        for draw in self.draws(n_boot, seed, labels=labels, max_redraws=max_redraws):
            yield self.images(draw)


def percentile_interval(samples, alpha: float = 0.05) -> tuple[float, float]:
    lo, hi = np.quantile(samples, (alpha / 2.0, 1.0 - alpha / 2.0))
    return float(lo), float(hi)


def _check_bootstrap(n_boot: int, alpha: float) -> None:
    if n_boot < 1 or not 0.0 < alpha < 1.0:
        raise MetricsError(f"need n_boot >= 1 and 0 < alpha < 1, got {n_boot}, {alpha}")


def bootstrap_ci(
    labels,
    probs,
    threshold: float,
    groups,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    max_redraws: int | None = None,
) -> dict:
    """Percentile bootstrap intervals of ``binary_metrics``, resampling whole sessions
    (``groups``, see :class:`SessionResampler`).

    Returns ``{"ci": {metric: (lo, hi)}, "n_units": sessions, "n_boot", "n_redrawn", "alpha"}``.
    """
    y, p = _check_binary(labels, probs)
    g = np.asarray(groups).reshape(-1)
    if g.shape != y.shape:
        raise MetricsError(f"groups ({g.size}) and labels ({y.size}) differ in length")
    _check_bootstrap(n_boot, alpha)
    resampler = SessionResampler(g)
    if resampler.n_units < 2:
        raise MetricsError("bootstrap over sessions needs at least 2 sessions, got 1")
    samples = {name: np.empty(n_boot) for name in CI_METRICS}
    for b, idx in enumerate(resampler.image_draws(n_boot, seed, labels=y,
                                                  max_redraws=max_redraws)):
        m = binary_metrics(y[idx], p[idx], threshold)
        for name in CI_METRICS:
            samples[name][b] = m[name]
    ci = {name: percentile_interval(samples[name], alpha) for name in CI_METRICS}
    return {"ci": ci, "n_units": resampler.n_units, "n_boot": n_boot,
            "n_redrawn": resampler.redrawn, "alpha": alpha}


def summarize_folds(fold_metrics: Sequence[Mapping[str, float]]) -> dict:
    """Mean and sample standard deviation (ddof=1) of each numeric metric across CV folds."""
    if len(fold_metrics) < 2:
        raise MetricsError(f"summarising folds needs at least 2 folds, got {len(fold_metrics)}")

    def numeric(m: Mapping) -> set[str]:
        number = int | float | np.number
        return {k for k, v in m.items() if isinstance(v, number) and not isinstance(v, bool)}

    keys = numeric(fold_metrics[0])
    for i, m in enumerate(fold_metrics[1:], start=1):
        if numeric(m) != keys:
            raise MetricsError(
                f"fold {i} has metrics {sorted(numeric(m) ^ keys)} that fold 0 does not share"
            )
    table = {k: np.array([float(m[k]) for m in fold_metrics]) for k in sorted(keys)}
    return {
        "mean": {k: float(v.mean()) for k, v in table.items()},
        "sd": {k: float(v.std(ddof=1)) for k, v in table.items()},
    }


# ---------------------------------------------------------------------------------------------
# Explanation quality (synthetic data, where lesion masks and cervix ellipses are known).


def _check_maps(weights, name: str = "weights") -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 3:
        raise MetricsError(f"{name} must be (N, H, W), got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise MetricsError(f"{name} contain NaN or infinite values")
    return w


def flat_map_fraction(weights) -> float:
    """Share of the (N, H, W) maps that are flat (see FLAT_REL): heatmaps that say nothing
    (every weight saturated at the same value; ``regulator.min_max`` maps them to 0, so Eq. 6
    gives them no gradient)."""
    w = _check_maps(weights).reshape(len(weights), -1).astype(np.float64)
    hi, lo = w.max(axis=1), w.min(axis=1)
    return float(np.mean(hi - lo <= FLAT_REL * np.maximum(np.abs(hi), np.abs(lo)) + FLAT_ABS))


# An encoder is dead when at least this share of the image-feature dimensions is constant.
DEAD_FRACTION = 0.99


def dead_feature_fraction(features) -> float:
    """Share of the image-feature dimensions of an (N, F) batch that are the same for every image
    (range within FLAT_REL of the magnitude, plus FLAT_ABS), i.e. that carry no information.

    Why across images and not "== 0": a dead patch encoder (every ReLU at 0 for every patch, as
    on configs/benchmark.py at learning rate 1e-3) feeds 0 into the LayerNorm before the
    classifier, which then outputs its bias: constant, but not 0."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise MetricsError(f"features must be (N >= 2, F), got shape {f.shape}")
    hi, lo = f.max(axis=0), f.min(axis=0)
    return float(np.mean(hi - lo <= FLAT_REL * np.maximum(np.abs(hi), np.abs(lo)) + FLAT_ABS))


def is_dead_encoder(features) -> bool:
    """The dead-encoder rule: at least DEAD_FRACTION of the image-feature dimensions are
    constant over the images of a validation (or test) split (``dead_feature_fraction``); the
    classifier's output is then the same for every image and its BCE stays at the class prior's
    (ln 2 when balanced)."""
    return dead_feature_fraction(features) >= DEAD_FRACTION


def pointing_game(weights, lesion, tolerance: int = 1) -> float:
    """Fraction of lesion-bearing images whose top-weight patch hits a lesion patch.

    A hit is a Chebyshev distance <= ``tolerance`` patches from any lesion patch. Ties for the top
    weight go to the first patch in row-major order (a flat map is not rewarded for ties). Images
    without any lesion are skipped; if none has one, :class:`MetricsError` is raised.
    """
    w = _check_maps(weights)
    les = np.asarray(lesion).astype(bool)
    if les.shape != w.shape:
        raise MetricsError(f"lesion shape {les.shape} differs from weights shape {w.shape}")
    if not les.reshape(les.shape[0], -1).any(axis=1).any():
        raise MetricsError("pointing game needs at least one image with a lesion; none has one")
    return float(np.nanmean(top_patch_hits(w, les, np.ones(len(w), bool), tolerance)))


def _precision_matrices(params: np.ndarray) -> np.ndarray:
    """Inverse covariances (N, 2, 2) of [mu_h, mu_v, s_hh, s_hv, s_vv]; must be pos. definite."""
    s_hh, s_hv, s_vv = params[:, 2], params[:, 3], params[:, 4]
    det = s_hh * s_vv - s_hv**2
    if not np.all((s_hh > 0) & (det > 0)):
        bad = np.flatnonzero(~((s_hh > 0) & (det > 0)))
        raise MetricsError(f"covariance not positive definite for rows {bad[:10].tolist()}")
    adjugate = np.stack([np.stack([s_vv, -s_hv], -1), np.stack([-s_hv, s_hh], -1)], -2)
    return adjugate / det[:, None, None]


def mass_in_ellipse(weights, cervix_params, n_sigma: float = 2.0) -> float:
    """Mean (over images) share of heatmap mass whose patch centre lies inside the cervix ellipse.

    Patch (row i, col j) has centre (h = j + 0.5, v = i + 0.5); inside means Mahalanobis distance
    <= ``n_sigma`` under the true cervix Gaussian [mu_h, mu_v, s_hh, s_hv, s_vv] (patch units).
    """
    w = _check_maps(weights)
    if np.any(w < 0):
        raise MetricsError("heatmap weights must be non-negative to be read as mass")
    total = w.sum(axis=(1, 2))
    if np.any(total <= 0):
        raise MetricsError(f"{int(np.sum(total <= 0))} heatmaps have zero total mass")
    params = np.asarray(cervix_params, dtype=np.float64).reshape(-1, 5)
    if params.shape[0] != w.shape[0]:
        raise MetricsError(f"{params.shape[0]} ellipses for {w.shape[0]} heatmaps")
    inside = _inside_ellipse(params, w.shape[1], w.shape[2], n_sigma)
    return float(np.mean((w * inside).sum(axis=(1, 2)) / total))


def centre_error(params_a, params_b) -> float:
    """Mean Euclidean distance (patch units) between centres (mu_h, mu_v) of two ellipse sets."""
    a = np.asarray(params_a, dtype=np.float64).reshape(-1, 5)
    b = np.asarray(params_b, dtype=np.float64).reshape(-1, 5)
    if a.shape != b.shape:
        raise MetricsError(f"{a.shape[0]} and {b.shape[0]} ellipses cannot be paired")
    return float(np.mean(np.hypot(a[:, 0] - b[:, 0], a[:, 1] - b[:, 1])))


# ---------------------------------------------------------------------------------------------
# Lesion-level explanation metrics. Each per-image function returns one value per input image,
# NaN for the images it does not use, so that `explanation_summary` can resample sessions.


def _inside_ellipse(params: np.ndarray, height: int, width: int, n_sigma: float) -> np.ndarray:
    """(N, height, width) bool: patch centre within ``n_sigma`` Mahalanobis of each Gaussian."""
    v, h = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    dh = h[None] - params[:, 0, None, None]
    dv = v[None] - params[:, 1, None, None]
    prec = _precision_matrices(params)
    m2 = (
        prec[:, 0, 0, None, None] * dh**2
        + 2.0 * prec[:, 0, 1, None, None] * dh * dv
        + prec[:, 1, 1, None, None] * dv**2
    )
    return m2 <= n_sigma**2


def _check_truth(w: np.ndarray, lesion=None, cervix_params=None, labels=None) -> tuple:
    """Ground truth as arrays aligned with the (N, H, W) maps, or a one-line MetricsError."""
    n = w.shape[0]
    out = []
    if lesion is not None:
        les = np.asarray(lesion).astype(bool)
        if les.shape != w.shape:
            raise MetricsError(f"lesion masks {les.shape} differ from weights {w.shape}")
        out.append(les)
    if cervix_params is not None:
        params = np.asarray(cervix_params, dtype=np.float64)
        if params.shape != (n, 5):
            raise MetricsError(f"cervix params must be ({n}, 5), got {params.shape}")
        out.append(params)
    if labels is not None:
        y = np.asarray(labels).reshape(-1)
        if y.shape != (n,) or not np.all(np.isin(y, (0, 1))):
            raise MetricsError(f"labels must be {n} values in {{0, 1}}")
        out.append(y.astype(np.int64))
    return tuple(out)


def top_patch_hits(weights, target, use, tolerance: int = 0) -> np.ndarray:
    """Per image: 1.0 if the top-weighted patch is within ``tolerance`` patches (Chebyshev) of a
    ``target`` patch, else 0.0; NaN where ``use`` is False or the image has no target patch.

    Ties for the top weight go to the first patch in row-major order, so a flat map scores only
    by luck of position. The one pointing game behind the synthetic lesions and the real
    acetowhite regions."""
    w = _check_maps(weights)
    tgt = np.asarray(target).astype(bool)
    if tgt.shape != w.shape:
        raise MetricsError(f"target patches {tgt.shape} differ from weights {w.shape}")
    out = np.full(w.shape[0], np.nan)
    for k in np.flatnonzero(np.asarray(use, bool) & tgt.any(axis=(1, 2))):
        top = np.unravel_index(int(np.argmax(w[k])), w[k].shape)
        rows, cols = np.nonzero(tgt[k])
        out[k] = float(np.maximum(np.abs(rows - top[0]), np.abs(cols - top[1])).min() <= tolerance)
    return out


def pointing_hits(weights, lesion, labels, tolerance: int = 0) -> np.ndarray:
    """Per image: the pointing game (``top_patch_hits``) against the lesion patches; NaN unless
    the image is CIN2+ (label 1) and has a lesion patch."""
    w = _check_maps(weights)
    les, y = _check_truth(w, lesion=lesion, labels=labels)
    return top_patch_hits(w, les, y == 1, tolerance)


def patch_auc(weights, positive, negative, use) -> np.ndarray:
    """Per image: ROC AUC of the patch weights, ``positive`` patches against ``negative`` ones
    (ties count one half, as scikit-learn's roc_auc_score); NaN where ``use`` is False or the
    image lacks either kind. 1 when every positive patch outweighs every negative one, 0.5 for
    a map blind to the difference."""
    w = _check_maps(weights)
    pos_mask, neg_mask = np.asarray(positive, bool), np.asarray(negative, bool)
    if pos_mask.shape != w.shape or neg_mask.shape != w.shape:
        raise MetricsError(f"patch masks {pos_mask.shape} / {neg_mask.shape} differ from "
                           f"weights {w.shape}")
    out = np.full(w.shape[0], np.nan)
    for k in np.flatnonzero(np.asarray(use, bool)):
        pos, neg = w[k][pos_mask[k]], w[k][neg_mask[k]]
        if pos.size and neg.size:
            diff = pos[:, None] - neg[None, :]
            out[k] = float(np.mean((diff > 0) + 0.5 * (diff == 0)))
    return out


def lesion_auc(weights, lesion, cervix_params, labels, n_sigma: float = 2.0) -> np.ndarray:
    """Per image: ROC AUC of the patch weights, lesion patches against the other patches inside
    the cervix (centre within the ``n_sigma`` ellipse), ties counting one half; NaN unless the
    image is CIN2+ and has both kinds of patch.

    Unlike the pointing game this reads the whole ranking: 1 when every lesion patch outweighs
    every other cervix patch, 0.5 for a map blind to lesions within the cervix."""
    w = _check_maps(weights)
    les, params, y = _check_truth(w, lesion, cervix_params, labels)
    cervix = _inside_ellipse(params, w.shape[1], w.shape[2], n_sigma)
    return patch_auc(w, les, cervix & ~les, y == 1)


def mass_share(weights, inside) -> np.ndarray:
    """Per image: share of the heatmap mass on ``inside``, a (N, H, W) membership in [0, 1]
    (bool, or the fraction of each patch inside a region: mass is then area-weighted); NaN for
    a map with no mass at all (weights that underflowed to 0 point nowhere), which the
    summaries leave out and count."""
    w = _check_maps(weights)
    if np.any(w < 0):
        raise MetricsError("heatmap weights must be non-negative to be read as mass")
    member = np.asarray(inside, dtype=np.float64)
    if member.shape != w.shape:
        raise MetricsError(f"membership {member.shape} differs from weights {w.shape}")
    total = w.sum(axis=(1, 2))
    share = (w * member).sum(axis=(1, 2)) / np.where(total > 0, total, 1.0)
    return np.where(total > 0, share, np.nan)


def mass_in_cervix(weights, cervix_params, n_sigma: float = 2.0) -> np.ndarray:
    """Per image: share of the heatmap mass on patches whose centre lies inside the cervix
    ellipse (as ``mass_in_ellipse``, not averaged); NaN for a map with no mass at all (weights
    that underflowed to 0 point nowhere), which the summaries then leave out and count."""
    w = _check_maps(weights)
    (params,) = _check_truth(w, cervix_params=cervix_params)
    return mass_share(w, _inside_ellipse(params, w.shape[1], w.shape[2], n_sigma))


def session_bootstrap_mean(
    values, sessions, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict:
    """Mean of the non-NaN per-image ``values`` and its percentile interval, resampling the
    sessions that hold them (:class:`SessionResampler`).

    Returns ``{"value", "ci95": [lo, hi], "n_images", "n_sessions"}``; value and interval are
    None when no image has a value."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    g = np.asarray(sessions).reshape(-1)
    if g.shape != v.shape:
        raise MetricsError(f"sessions ({g.size}) and values ({v.size}) differ in length")
    _check_bootstrap(n_boot, alpha)
    used = ~np.isnan(v)
    if not used.any():
        return {"value": None, "ci95": None, "n_images": 0, "n_sessions": 0}
    resampler = SessionResampler(g[used])
    sums = np.bincount(resampler.unit, weights=v[used])
    counts = np.bincount(resampler.unit).astype(np.float64)
    draw = np.stack(list(resampler.draws(n_boot, seed)))
    means = sums[draw].sum(axis=1) / counts[draw].sum(axis=1)
    return {
        "value": float(v[used].mean()),
        "ci95": list(percentile_interval(means, alpha)),
        "n_images": int(used.sum()),
        "n_sessions": int(sums.size),
    }


EXPLANATION_IMAGES = {
    "pointing_game": "CIN2+ images with a lesion patch; hit = top-weighted patch is a lesion patch",
    "lesion_auc": "CIN2+ images with lesion and non-lesion patches inside the cervix",
    "mass_in_cervix": "all images",
    "mass_in_cervix_normal": "normal images (label 0)",
}


def explanation_summary(
    weights, lesion_masks, cervix_params, labels, sessions, *, n_boot: int = 1000, seed: int = 0
) -> dict:
    """The lesion-level explanation metrics of a split, each with its session-bootstrap 95%
    interval, the images and sessions it used, and which images those are (``images``).

    ``weights`` (N, G, G) patch weights; ``lesion_masks`` (N, G, G) lesion patches;
    ``cervix_params`` (N, 5) the true cervix Gaussian in patch units; ``labels`` 0/1 (1 = CIN2+);
    ``sessions`` (N,) the resampling unit."""
    y = np.asarray(labels).reshape(-1)
    mass = mass_in_cervix(weights, cervix_params)
    per_image = {
        "pointing_game": pointing_hits(weights, lesion_masks, labels),
        "lesion_auc": lesion_auc(weights, lesion_masks, cervix_params, labels),
        "mass_in_cervix": mass,
        "mass_in_cervix_normal": np.where(y == 0, mass, np.nan),
    }
    return {
        name: {
            **session_bootstrap_mean(values, sessions, n_boot=n_boot, seed=seed),
            "images": EXPLANATION_IMAGES[name],
        }
        for name, values in per_image.items()
    }


# ---------------------------------------------------------------------------------------------
# Explanation quality against real expert regions (AnnoCerv's acetowhite outlines, closed into
# regions by jaxcerv.data.regions and stored per patch as the share of the patch inside).

# A patch counts as region when at least this share of it lies inside the expert's region: the
# binarisation for region AUC and the pointing game (mass reads the fractions themselves).
REGION_CUT = 0.5

REGION_IMAGES = {
    "region_auc": "closed regions with patches on both sides of the cut: region vs the other "
                  "patches (of the photograph, where the caller says which those are)",
    "mass_in_region": "closed regions covering a patch at the cut: weight share, area-weighted",
    "pointing_game": "closed regions covering a patch at the cut: top patch inside the region",
    "pointing_game_within_1_patch": "as pointing_game, hit within 1 patch of a region patch",
}


def region_per_image(weights, region_fraction, usable, cut: float = REGION_CUT, within=None
                     ) -> dict[str, np.ndarray]:
    """Per image (NaN where unused): the real-region metrics of ``REGION_IMAGES``.

    ``region_fraction`` (N, H, W) share of each patch inside the expert's region, in [0, 1];
    ``usable`` (N,) whether the outline could be closed (an unusable one has no region to score
    against). An image is used when usable and at least one patch reaches ``cut``: an empty
    outline (no acetowhite marked) cannot tell a good map from a bad one here. ``within``
    (N, H, W) bool, default every patch: the patches the region AUC ranks (e.g. those holding
    photograph pixels, so a letterbox's black patches are not free negatives)."""
    w = _check_maps(weights)
    frac = np.asarray(region_fraction, np.float64)
    if frac.shape != w.shape:
        raise MetricsError(f"region fractions {frac.shape} differ from weights {w.shape}")
    if np.any((frac < 0) | (frac > 1)) or not np.all(np.isfinite(frac)):
        raise MetricsError("region fractions must lie in [0, 1]")
    ok = np.asarray(usable, bool).reshape(-1)
    if ok.shape != (w.shape[0],):
        raise MetricsError(f"region_usable must be ({w.shape[0]},), got {ok.shape}")
    region = frac >= cut
    use = ok & region.any(axis=(1, 2))
    inside = np.ones(w.shape, bool) if within is None else np.asarray(within, bool)
    return {
        "region_auc": patch_auc(w, region & inside, inside & ~region, use),
        "mass_in_region": np.where(use, mass_share(w, frac), np.nan),
        "pointing_game": top_patch_hits(w, region, use, 0),
        "pointing_game_within_1_patch": top_patch_hits(w, region, use, 1),
    }


def region_summary(weights, region_fraction, usable, sessions, *, cut: float = REGION_CUT,
                   within=None, n_boot: int = 1000, seed: int = 0) -> dict:
    """The real-region metrics of a split, each ``{"value", "ci95", "n_images", "n_sessions",
    "n_skipped", "images"}`` (interval by resampling the cases), plus ``"masks"``: how many
    images there were, how many outlines were usable, and how many of those mark a region at
    the cut."""
    per_image = region_per_image(weights, region_fraction, usable, cut, within)
    n = len(np.asarray(weights))
    ok = np.asarray(usable, bool).reshape(-1)
    marked = ok & (np.asarray(region_fraction) >= cut).reshape(n, -1).any(axis=1)
    out: dict = {
        name: {**session_bootstrap_mean(v, sessions, n_boot=n_boot, seed=seed),
               "n_skipped": int(np.isnan(v).sum()), "images": REGION_IMAGES[name]}
        for name, v in per_image.items()
    }
    out["masks"] = {"n_images": n, "n_usable": int(ok.sum()), "n_unusable": int((~ok).sum()),
                    "n_with_region": int(marked.sum()), "cut": cut}
    return out


def paired_mean_difference(a, b, sessions, *, n_boot: int = 1000, seed: int = 0,
                           alpha: float = 0.05) -> dict:
    """Paired session bootstrap of mean(a) - mean(b) over the images where both have a value
    (per-image metrics of two heatmaps on the same images): the difference, its interval and
    the two-sided p-value (twice the smaller tail of the resampled differences around 0).

    Returns ``{"delta", "ci95", "p_value", "n_images", "n_sessions"}``; None values when no
    image has both."""
    x, y = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    g = np.asarray(sessions).reshape(-1)
    if not x.shape == y.shape == g.shape:
        raise MetricsError(f"paired values ({x.size}, {y.size}) and sessions ({g.size}) differ")
    both = ~np.isnan(x) & ~np.isnan(y)
    if not both.any():
        return {"delta": None, "ci95": None, "p_value": None, "n_images": 0, "n_sessions": 0}
    _, unit = np.unique(g[both], return_inverse=True)
    sums = np.bincount(unit, weights=(x - y)[both])
    counts = np.bincount(unit).astype(np.float64)
    draw = np.random.default_rng(seed).integers(0, sums.size, size=(n_boot, sums.size))
    diffs = sums[draw].sum(axis=1) / counts[draw].sum(axis=1)
    lo, hi = np.quantile(diffs, (alpha / 2.0, 1.0 - alpha / 2.0))
    p = min(1.0, 2.0 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)))
    return {"delta": float((x - y)[both].mean()), "ci95": [float(lo), float(hi)],
            "p_value": float(p), "n_images": int(both.sum()), "n_sessions": int(sums.size)}

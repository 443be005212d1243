"""The hand-crafted baseline of small-data colposcopy papers: colour and texture statistics of the
cervix region, then a regularised logistic regression (scikit-learn), on the same grouped splits,
metrics and run-folder layout as the patch model.

`jaxcerv handcrafted --config=configs/iarc_atlas.py --workdir=W` writes
`W/splits.json`,
`W/fold_K/{results.json, eval/val.npz, eval/test.npz}` (one fold: straight into W) and
`W/results.json` with the per-fold mean +- sd and the pooled out-of-fold ROC AUC with its session
bootstrap interval, so a report or the experiments runner reads it like a trained run.

Why these features: acetowhitening (the VIA cue) is a rise in lightness and a loss of chroma of
the transformation zone, and CIN2+ adds coarse texture (mosaic, punctation, atypical vessels);
lightness/chroma statistics, whiteness fractions, gradient energy and grey-level co-occurrence
statistics are what the classical colposcopy pipelines feed to a linear or kernel classifier.
The cervix region is a central ellipse (the colposcopist frames the cervix) minus the dark
letterbox and shadows and the specular highlights, which carry no tissue colour.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxcerv.evaluation import metrics as metrics_lib
from jaxcerv.runtime.rundir import RunDir, write_json

GLCM_LEVELS = 16


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65) of uint8 sRGB pixels (..., 3): L* in [0, 100]."""
    c = rgb.astype(np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375],
                  [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], axis=-1)


def cervix_region(rgb: np.ndarray, axes: tuple[float, float] = (0.38, 0.30)) -> np.ndarray:
    """Boolean mask: inside the central ellipse (semi-axes as fractions of width, height of the
    whole image), not dark (letterbox, shadow: max channel < 40), not specular (all > 235)."""
    h, w = rgb.shape[:2]
    y, x = np.mgrid[:h, :w]
    inside = ((x + 0.5 - w / 2) / (axes[0] * w)) ** 2 + ((y + 0.5 - h / 2) / (axes[1] * h)) ** 2
    bright = rgb.max(axis=-1) >= 40
    specular = rgb.min(axis=-1) > 235
    return (inside <= 1) & bright & ~specular


def glcm_statistics(levels: np.ndarray, mask: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    """Contrast, homogeneity, energy, correlation of the symmetric grey-level co-occurrence
    matrix of ``levels`` (ints in [0, GLCM_LEVELS)) over pixel pairs (p, p + offset) both in
    ``mask``."""
    dy, dx = offset
    h, w = levels.shape
    a = levels[: h - dy, : w - dx]
    b = levels[dy:, dx:]
    keep = mask[: h - dy, : w - dx] & mask[dy:, dx:]
    pairs = np.bincount(a[keep] * GLCM_LEVELS + b[keep], minlength=GLCM_LEVELS**2)
    p = pairs.reshape(GLCM_LEVELS, GLCM_LEVELS).astype(np.float64)
    p = p + p.T
    p /= max(p.sum(), 1.0)
    i, j = np.mgrid[:GLCM_LEVELS, :GLCM_LEVELS]
    mu = (i * p).sum()
    var = ((i - mu) ** 2 * p).sum()
    correlation = ((i - mu) * (j - mu) * p).sum() / var if var > 0 else 0.0
    return np.array([((i - j) ** 2 * p).sum(), (p / (1 + np.abs(i - j))).sum(), (p**2).sum(),
                     correlation])


FEATURE_NAMES: tuple[str, ...] = (
    *(f"{c}_{s}" for c in ("L", "a", "b", "chroma", "hue_ab", "saturation")
      for s in ("mean", "sd", "p10", "p90")),
    "white_frac_10", "white_frac_20", "red_frac",
    "grad_mean", "grad_sd", "grad2_mean", "grad2_sd",
    *(f"glcm{d}_{s}" for d in (1, 4) for s in ("contrast", "homogeneity", "energy", "correlation")),
    "region_frac",
)


def features(image: np.ndarray, downsample: int = 2) -> np.ndarray:
    """The baseline's feature vector (``FEATURE_NAMES``) of one uint8 RGB image."""
    if downsample > 1:
        h, w = (s - s % downsample for s in image.shape[:2])
        image = image[:h, :w].reshape(h // downsample, downsample, w // downsample, downsample, 3)
        image = image.mean(axis=(1, 3)).round().astype(np.uint8)
    mask = cervix_region(image)
    if mask.sum() < 16:  # no tissue in the region at all: an all-dark or blank image
        mask = np.ones(image.shape[:2], bool)
    lab = srgb_to_lab(image)
    chroma = np.hypot(lab[..., 1], lab[..., 2])
    hue = np.arctan2(lab[..., 2], lab[..., 1])
    rgb = image.astype(np.float64)
    saturation = 1 - rgb.min(-1) / np.maximum(rgb.max(-1), 1)
    out = []
    for channel in (lab[..., 0], lab[..., 1], lab[..., 2], chroma, hue, saturation):
        v = channel[mask]
        out += [v.mean(), v.std(), *np.percentile(v, [10, 90])]
    # Acetowhite: lighter and less coloured than the region's own median tissue.
    whiteness = lab[..., 0] - chroma
    median = np.median(whiteness[mask])
    out += [np.mean(whiteness[mask] > median + 10), np.mean(whiteness[mask] > median + 20)]
    out.append(np.mean(lab[..., 1][mask] > np.median(lab[..., 1][mask]) + 10))  # vessels, redness
    for light in (lab[..., 0], lab[::2, ::2, 0]):
        gy, gx = np.gradient(light)
        g = np.hypot(gx, gy)[mask if light.shape == mask.shape else mask[::2, ::2]]
        out += [g.mean(), g.std()]
    light = lab[..., 0]
    lo, hi = np.percentile(light[mask], [1, 99])
    levels = np.clip((light - lo) / max(hi - lo, 1e-6) * GLCM_LEVELS, 0, GLCM_LEVELS - 1)
    levels = levels.astype(np.int64)
    for d in (1, 4):
        out += list((glcm_statistics(levels, mask, (0, d)) + glcm_statistics(levels, mask, (d, 0)))
                    / 2)
    out.append(mask.mean())
    return np.asarray(out, np.float64)


def feature_matrix(source: Sequence[dict], indices: Sequence[int]) -> np.ndarray:
    return np.stack([features(np.asarray(source[int(i)]["image"], np.uint8)) for i in indices])


def fit_predict(
    x_train: np.ndarray, y_train: np.ndarray, x_eval: Sequence[np.ndarray], c: float
) -> list[np.ndarray]:
    """Standardise on the training rows, fit an L2 logistic regression with balanced class
    weights (the minority class would otherwise be ignored), return P(CIN2+) of each x_eval."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=c, class_weight="balanced", max_iter=5000),
    )
    model.fit(x_train, y_train)
    return [model.predict_proba(x)[:, 1] for x in x_eval]


def pooled_test_metrics(run: RunDir, *, n_boot: int, seed: int) -> dict[str, Any]:
    """Out-of-fold test predictions of every fold pooled (each image tested once): ROC AUC with
    its 95% percentile bootstrap over sessions. Pooling mixes the folds' calibrations; the AUC
    of pooled scores is the usual CV summary for small data, the per-fold mean +- sd the other."""
    parts = [np.load(f.eval_npz("test")) for f in run.folds()]
    labels = np.concatenate([p["labels"] for p in parts])
    probs = np.concatenate([p["probabilities"] for p in parts])
    sessions = np.concatenate([p["sessions"] for p in parts])
    ci = metrics_lib.bootstrap_ci(labels, probs, 0.5, sessions, n_boot=n_boot, seed=seed)
    return {"roc_auc": metrics_lib.roc_auc(labels, probs), "roc_auc_ci95": ci["ci"]["roc_auc"],
            "n_images": len(labels), "n_sessions": ci["n_units"], "n_boot": n_boot}


def run_baseline(config: Any, workdir: str) -> dict[str, Any]:
    """Features of every image once, then one fit per fold: results in the run-folder layout."""
    from jaxcerv.data import pipeline, splits
    from jaxcerv.evaluation import evaluate

    run = RunDir(workdir)
    run.makedirs()
    write_json(run.config, config.to_dict())
    source, records = pipeline.load(config, run.root)
    folds = splits.make_splits(records, config.data, run.root, seed=config.seed)
    x = feature_matrix(source, np.arange(len(records)))
    print(f"{x.shape[1]} features of {len(records)} images", flush=True)
    c = config.handcrafted.c
    per_fold = []
    for k, split in enumerate(folds):
        fold_run = run if len(folds) == 1 else run.fold(k)
        fold_run.makedirs()
        val_p, test_p = fit_predict(
            x[split["train"]], records.labels[split["train"]],
            [x[split["val"]], x[split["test"]]], c,
        )
        preds = {}
        for name, p in (("val", val_p), ("test", test_p)):
            idx = split[name]
            preds[name] = evaluate.with_records(
                {"probabilities": p.astype(np.float32), "features": x[idx].astype(np.float32)},
                records, idx,
            )
            for key in ("truth_cervix", "truth_lesion"):  # no heatmap: no explanation metrics
                preds[name].pop(key, None)
            evaluate.save_predictions(fold_run, name, preds[name])
        results = evaluate.test_metrics(config, preds["val"], preds["test"])
        results["model"] = {"kind": "handcrafted", "c": c, "features": list(FEATURE_NAMES)}
        write_json(fold_run.results, results)
        per_fold.append(results)
        print(f"fold {k + 1}/{len(folds)}: test ROC AUC {results['test']['roc_auc']:.3f}",
              flush=True)
    if len(folds) == 1:
        return per_fold[0]
    summary = {
        "folds": per_fold,
        "test": metrics_lib.summarize_folds([r["test"] for r in per_fold]),
        "pooled_test": pooled_test_metrics(run, n_boot=config.eval.bootstrap, seed=config.seed),
        "model": per_fold[0]["model"],
    }
    write_json(run.results, summary)
    t, p = summary["test"], summary["pooled_test"]
    lo, hi = p["roc_auc_ci95"]
    print(f"{len(folds)}-fold test ROC AUC {t['mean']['roc_auc']:.3f} +- {t['sd']['roc_auc']:.3f};"
          f" pooled {p['roc_auc']:.3f} (95% CI {lo:.3f}-{hi:.3f})", flush=True)
    return summary

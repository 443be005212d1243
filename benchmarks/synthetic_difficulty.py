"""How hard a synthetic data config is, by cheap model-free oracles instead of training.

Usage:
  .venv/bin/python benchmarks/synthetic_difficulty.py --config=configs/benchmark.py \
      [--num_images 480] [--config.data.synthetic.texture_amplitude=0.2] [--json OUT.json]

Draws the config's images (its grid, patch size, seed and ``config.data.synthetic`` knobs) and
scores each cue family with scikit-learn models, cross-validated by session (5 grouped folds,
out-of-fold ROC AUC against the recorded labels):

* ``pixels_RxR``: logistic regression on the whole image box-averaged to R x R px (R = 8, 16,
  32): what a linear model of a downsampled image sees.
* ``coarse_stats``: gradient boosting on colour and edge histograms of the image averaged to
  1/8 of its size (whiteness levels and how many pixels reach them = acetowhite extent and
  density; edge strengths = sharp margins). A proxy for a downsampled whole-image CNN, which
  can also learn such translation-invariant statistics.
* ``texture``: gradient boosting on per-patch fine periodic texture (the residual after 4x4 box
  smoothing correlated with itself 4 px away along both axes), at full resolution: quantiles
  over all patches and over the whitish ones (background distractors carry texture in both
  classes, so where the texture is matters).
* ``all``: coarse_stats and texture together: roughly what a full-resolution model that
  localises the lesions could reach.
* ``ceiling``: the drawn class (the pixels' truth) against the recorded label: what
  ``label_noise`` leaves reachable (about 1 - label_noise).

Prints a table; ``--json`` also writes it (outside the repository, e.g. /tmp). Nothing is
trained on JAX and nothing tracked is written.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags
from PIL import Image
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxcerv.data import synthetic  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs/benchmark.py"))
_NUM = flags.DEFINE_integer("num_images", 480, "images to draw (default: 480)")
_JSON = flags.DEFINE_string("json", None, "also write the scores to this JSON file")


def box_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over k x k blocks of an (S, S, ...) array (S divisible by k)."""
    s = x.shape[0] // k
    return x.reshape(s, k, s, k, *x.shape[2:]).mean(axis=(1, 3))


def downsampled(image: np.ndarray, size: int) -> np.ndarray:
    """The image box-averaged to size x size px (PIL's BOX filter handles any ratio)."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BOX), np.float32)


def coarse_stats(image: np.ndarray) -> np.ndarray:
    """Histograms of whiteness and edge strength on the 1/8-size image."""
    low = downsampled(image, image.shape[0] // 8)
    r, g, b = low[..., 0], low[..., 1], low[..., 2]
    bright = r >= 150  # cervix, acetowhite, highlights, steel; not the dark walls
    white = g[bright] - 0.5 * (r[bright] - b[bright])  # acetowhite raises G, pink has low G
    levels = np.linspace(100, 240, 15)
    extent = [(white >= t).mean() * bright.mean() for t in levels]
    gy, gx = np.gradient(g)
    edge = np.hypot(gx, gy)[bright]
    edges = [(edge >= t).mean() * bright.mean() for t in (5, 10, 15, 20, 30, 40, 60)]
    return np.array([*extent, *edges, *np.quantile(g[bright], [0.5, 0.9, 0.98, 1.0])])


def texture_stats(image: np.ndarray, patch: int) -> np.ndarray:
    """Quantiles of a per-patch periodic-texture score, over all and over whitish patches."""
    g = image[..., 1].astype(np.float64)
    r = g - np.repeat(np.repeat(box_mean(g, 4), 4, 0), 4, 1)
    cx, cy = np.zeros_like(r), np.zeros_like(r)
    cx[:, :-4] = r[:, :-4] * r[:, 4:]
    cy[:-4] = r[:-4] * r[4:]
    score = np.minimum(box_mean(cx, patch), box_mean(cy, patch)).ravel()
    rgb = box_mean(image.astype(np.float64), patch).reshape(-1, 3)
    whitish = (rgb[:, 0] >= 170) & (rgb[:, 1] >= 130)  # on the cervix, partly acetowhite
    on = score[whitish] if whitish.any() else np.zeros(1)
    q = [0.5, 0.9, 1.0]
    return np.log1p(np.maximum(0.0, [*np.quantile(score, q), *np.quantile(on, q)]))


def oof_auc(model, x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    """Out-of-fold ROC AUC over 5 folds grouped by session."""
    folds = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0)
    p = cross_val_predict(model, x, y, groups=groups, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, p))


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    knobs = synthetic.Knobs.from_mapping(config.data.synthetic)
    grid, patch, seed = config.grid_size, config.patch_size, config.data.synthetic_seed
    start = time.perf_counter()
    feats: dict[str, list[np.ndarray]] = {"pixels_8": [], "pixels_16": [], "pixels_32": [],
                                          "coarse_stats": [], "texture": []}
    labels, true_labels, groups = [], [], []
    for i in range(_NUM.value):
        scene = synthetic.make_scene(i, seed=seed, grid=grid, patch=patch, knobs=knobs)
        image, _ = synthetic.render(scene)
        for r in (8, 16, 32):
            feats[f"pixels_{r}"].append(downsampled(image, r).ravel())
        feats["coarse_stats"].append(coarse_stats(image))
        feats["texture"].append(texture_stats(image, patch))
        labels.append(scene.label)
        true_labels.append(scene.true_label)
        groups.append(scene.session)
    y, groups = np.array(labels), np.array(groups)
    drawn = time.perf_counter() - start

    linear = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000))
    boosted = HistGradientBoostingClassifier(max_iter=150, learning_rate=0.05, random_state=0)
    x = {k: np.stack(v) for k, v in feats.items()}
    x["all"] = np.concatenate([x["coarse_stats"], x["texture"]], axis=1)
    scores = {
        f"pixels_{r}x{r}": oof_auc(linear, x[f"pixels_{r}"], y, groups) for r in (8, 16, 32)
    }
    for name in ("coarse_stats", "texture", "all"):
        scores[name] = oof_auc(boosted, x[name], y, groups)
    scores["ceiling"] = float(roc_auc_score(y, true_labels))

    changed = knobs.changed()
    print(f"{len(y)} images ({int(y.sum())} labelled CIN2+), {len(set(groups))} sessions, "
          f"{grid}x{grid} patches of {patch} px, drawn in {drawn:.0f} s")
    print("knobs changed from the demo: " + (", ".join(f"{k}={v}" for k, v in changed.items())
                                             or "none"))
    print("| oracle | out-of-fold ROC AUC |\n|---|---|")
    for name, auc in scores.items():
        print(f"| {name} | {auc:.3f} |")
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump({"num_images": len(y), "knobs": changed, "auc": scores}, f, indent=1)


if __name__ == "__main__":
    app.run(main)

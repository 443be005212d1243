"""Do our heatmaps point where the expert points? The real-data table on AnnoCerv.

  jaxcerv experiments --suite=real_heatmaps --config=annocerv --workdir=W

Every row is scored on the same pooled out-of-fold test photographs (grouped k-fold CV by case)
for classification (label: Swede >= 5, an expert's visual score, not histology) and for where
its heatmap points, against the examiner's acetowhite outline closed into a region
(``metrics.region_per_image``: region AUC, mass in the region, pointing game).

Trained rows (``variants``; run by ``runner.run_suite`` like any suite, resumable): the paper's
model with and without the regulator, the recommended recipe (``suites.RECIPE``, the
default), the earlier recipe with a lambda warm-up and its stand-in without it (Eq. 6 on the
logits at learning rate 3e-4), ABMIL (its
attention is its heatmap) and a whole-image CNN (its heatmap: the input gradient of its logit,
pooled to the patch grid, from each fold's selected checkpoint). The hand-crafted
colour/texture classifier gives the colour row its classification columns; its heatmap is the
whiteness heuristic.

Rows that cost no training (``heatmap_only``): the whiteness heuristic (``whiteness_map``:
acetowhite epithelium is bright and desaturated), a logistic model on per-patch colour
statistics fitted on each fold's training images and their regions (the only row that sees the
masks), and the fixed centre prior G0 of Alg. 1. Each explanation metric has a paired case
bootstrap against the whiteness heuristic: a model heatmap that does not beat it is not worth
showing a clinician, and the table says so.

Writes ``W/real_heatmaps.md`` / ``.csv`` / ``.json`` (both tables, the masks used, the targets
measured), ``W/real_heatmaps_fig.png`` (8 test photographs at their true aspect, the
expert region outlined, every row's heatmap beside it: it shows the photographs, so it stays in
the run folder) and ``W/real_heatmaps_maps.png`` (the same without the photographs).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from jaxcerv.evaluation import metrics as metrics_lib
from jaxcerv.experiments import outputs, results, tables
from jaxcerv.experiments.results import Row
from jaxcerv.experiments.suites import CNN, COLOUR, PROPOSED, Variant
from jaxcerv.runtime.rundir import RunDir, RunError, write_json

SUITE = "real_heatmaps"
G0 = "centre_prior"  # the fixed centre prior: where the expert's regions sit on average
LABEL_NOTE = "label: Swede >= 5, an expert's visual score, not histology"
EXPLANATION = (
    ("region_auc", "Region AUC"),
    ("mass_in_region", "Mass in region"),
    ("pointing_game", "Pointing game"),
    ("pointing_game_within_1_patch", "Pointing, 1 patch"),
)
PAIRED = ("region_auc", "mass_in_region", "pointing_game")
# Column titles of the figure.
SHORT = {PROPOSED: "Paper model", COLOUR: "Whiteness heuristic", CNN: "CNN input gradient",
         "recommended": "Earlier stand-in", "recipe": "Recommended recipe",
         "warmup_recipe": "Earlier recipe",
         "no_regulator": "No regulator",
         "abmil": "ABMIL attention", "colour_logistic": "Colour logistic", G0: "Centre prior G0"}


# ---------------------------------------------------------------------------------------------
# Heatmaps that cost no training.


def whiteness_map(image: np.ndarray, patch_size: int) -> np.ndarray:
    """(rows, cols) per-patch whiteness of a uint8 RGB image: mean of L*/100 - saturation over
    the patch's pixels (specular highlights, all channels > 235, left out: glare is white but
    not tissue), min-max normalised over the image so it reads as non-negative mass; a patch of
    glare only takes the image's minimum. Why: acetowhite epithelium is bright and desaturated
    against pink squamous epithelium and red columnar epithelium; the letterbox scores lowest."""
    from jaxcerv.experiments.handcrafted import srgb_to_lab

    rgb = np.asarray(image, np.uint8)
    rows, cols = rgb.shape[0] // patch_size, rgb.shape[1] // patch_size
    rgb = rgb[: rows * patch_size, : cols * patch_size]
    c = rgb.astype(np.float64)
    saturation = 1.0 - c.min(-1) / np.maximum(c.max(-1), 1.0)
    white = srgb_to_lab(rgb)[..., 0] / 100.0 - saturation
    keep = ~(rgb.min(-1) > 235)

    def per_patch(x: np.ndarray) -> np.ndarray:
        return x.reshape(rows, patch_size, cols, patch_size).sum(axis=(1, 3))

    n = per_patch(keep.astype(np.float64))
    mean = per_patch(np.where(keep, white, 0.0)) / np.maximum(n, 1.0)
    lo = mean[n > 0].min() if (n > 0).any() else 0.0
    mean = np.where(n > 0, mean, lo)
    span = mean.max() - lo
    return (mean - lo) / span if span > 0 else np.zeros_like(mean)


def patch_colour_features(image: np.ndarray, patch_size: int) -> np.ndarray:
    """(rows * cols, 7) per patch: mean L*, a*, b*, chroma, saturation, whiteness and the sd of
    L* (the statistics a colposcopist's eye reads as acetowhite), row-major."""
    from jaxcerv.experiments.handcrafted import srgb_to_lab

    rgb = np.asarray(image, np.uint8)
    rows, cols = rgb.shape[0] // patch_size, rgb.shape[1] // patch_size
    rgb = rgb[: rows * patch_size, : cols * patch_size]
    lab = srgb_to_lab(rgb)
    c = rgb.astype(np.float64)
    sat = 1.0 - c.min(-1) / np.maximum(c.max(-1), 1.0)
    chroma = np.hypot(lab[..., 1], lab[..., 2])
    channels = np.stack([*np.moveaxis(lab, -1, 0), chroma, sat, lab[..., 0] / 100 - sat])
    blocks = channels.reshape(-1, rows, patch_size, cols, patch_size)
    mean = blocks.mean(axis=(2, 4)).reshape(len(channels), -1).T
    sd = blocks[0].std(axis=(1, 3)).reshape(-1, 1)
    return np.concatenate([mean, sd], axis=1)


def colour_logistic_maps(features: np.ndarray, region: np.ndarray, usable: np.ndarray,
                         train: np.ndarray, test: np.ndarray, cut: float = metrics_lib.REGION_CUT
                         ) -> np.ndarray:
    """P(region) per patch of the ``test`` images from an L2 logistic regression (balanced
    class weights, standardised) on the patches of the ``train`` images with a usable outline
    (an empty one: every patch is a negative). ``features`` (N, patches, F), ``region`` (N, rows,
    cols) fractions; returns (len(test), rows, cols)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fit_on = np.asarray(train)[usable[train]]
    x = features[fit_on].reshape(-1, features.shape[-1])
    y = (region[fit_on] >= cut).reshape(-1)
    shape = region.shape[1:]
    if y.all() or not y.any():  # nothing to learn from: a flat map
        return np.full((len(test), *shape), float(y.mean()) if y.size else 0.0)
    model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced",
                                                               max_iter=2000))
    model.fit(x, y)
    p = model.predict_proba(features[test].reshape(-1, features.shape[-1]))[:, 1]
    return p.reshape(len(test), *shape)


def photograph_patches(image: np.ndarray, patch_size: int) -> np.ndarray:
    """(rows, cols) bool: the patches holding any photograph pixel (not all letterbox black)."""
    a = np.asarray(image)
    rows, cols = a.shape[0] // patch_size, a.shape[1] // patch_size
    a = a[: rows * patch_size, : cols * patch_size].max(axis=-1)
    return a.reshape(rows, patch_size, cols, patch_size).max(axis=(1, 3)) > 0


def centre_prior(grid: int, g0_fraction: float) -> np.ndarray:
    """(grid, grid) G0 of Alg. 1 as a density: the same map for every photograph."""
    from jaxcerv.model import regulator

    params = regulator.initial_params((grid, grid), g0_fraction)
    return np.asarray(regulator.gaussian_density(params, (grid, grid)), np.float64)


def input_gradient_maps(fold_dir: str, images: np.ndarray, patch_size: int,
                        batch_size: int = 16) -> np.ndarray:
    """(N, rows, cols) |d logit / d pixel| summed over channels and each patch's pixels, from the
    fold's selected checkpoint (a whole-image CNN has no patch weights: this is the saliency a
    clinician would be shown). Why the input gradient rather than Grad-CAM: it needs no access
    to inner feature maps, so it works for every family, and it resolves below the CNN's last
    feature map (Grad-CAM's 4 x 4 at 128 px would be coarser than the patch grid)."""
    import jax
    import jax.numpy as jnp

    from jaxcerv.inference.predict import Predictor
    from jaxcerv.model import networks

    predictor = Predictor.from_run(fold_dir)
    model = networks.from_config(predictor.config)
    params = predictor.params

    @jax.jit
    def grad(x):
        return jax.grad(lambda z: model.apply({"params": params}, z, train=False).logits.sum())(x)

    out = []
    for start in range(0, len(images), batch_size):
        x = jnp.asarray(images[start:start + batch_size], jnp.float32)
        g = np.abs(np.asarray(grad(x))).sum(-1)
        b, h, w = g.shape
        rows, cols = h // patch_size, w // patch_size
        out.append(g[:, :rows * patch_size, :cols * patch_size]
                   .reshape(b, rows, patch_size, cols, patch_size).sum(axis=(2, 4)))
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------------
# Collecting every row's maps on the pooled test photographs.


@dataclasses.dataclass
class MapRow:
    """A heatmap on the pooled test photographs: ``row`` carries classification (None for a
    heatmap-only row); ``ids`` / ``sessions`` / ``weights`` are aligned."""

    name: str
    label: str
    ids: np.ndarray
    sessions: np.ndarray
    weights: np.ndarray
    row: Row | None = None
    seconds: float | None = None  # wall time of making the maps, where it is not training


def _fold_test_ids(run: RunDir) -> list[np.ndarray]:
    out = []
    for fold in results.fold_dirs(run):
        with np.load(fold.eval_npz("test")) as z:
            out.append(z["ids"].astype(str))
    return out


def collect_maps(workdir: str, rows: Sequence[Row], source: Any, records: Any) -> list[MapRow]:
    """Every row's pooled test heatmaps: the trained rows' own weights (the CNN's input
    gradients, the colour row's whiteness), then the colour logistic model and G0."""
    from jaxcerv.data import splits as splits_lib

    at = {str(i): k for k, i in enumerate(records.ids)}
    config = rows[0].config
    patch, grid = config["patch_size"], config["grid_size"]
    out: list[MapRow] = []
    for row in rows:
        name = row.variant.name
        idx = np.array([at[i] for i in row.ids])
        seconds = None
        if name == CNN:
            cache = os.path.join(workdir, CNN, "input_gradients.npz")
            if os.path.exists(cache):
                with np.load(cache) as z:
                    weights, seconds = z["weights"], float(z["seconds"])
            else:
                t0 = time.perf_counter()
                run = RunDir(os.path.join(workdir, CNN))
                parts = []
                for fold, ids in zip(results.fold_dirs(run), _fold_test_ids(run), strict=True):
                    images = np.stack([np.asarray(source[at[i]]["image"]) for i in ids])
                    parts.append(input_gradient_maps(fold.root, images, patch))
                weights = np.concatenate(parts)
                seconds = time.perf_counter() - t0
                np.savez_compressed(cache, weights=weights, seconds=seconds)
        elif name == COLOUR:
            t0 = time.perf_counter()
            weights = np.stack([whiteness_map(np.asarray(source[k]["image"]), patch)
                                for k in idx])
            seconds = time.perf_counter() - t0
        elif row.weights is not None:
            weights = row.weights
        else:
            continue
        out.append(MapRow(name, row.variant.label, row.ids, row.sessions,
                          np.asarray(weights, np.float64), row, seconds))
    reference = rows[0]
    idx = np.array([at[i] for i in reference.ids])
    # The colour logistic model: fitted per fold on that fold's training images only.
    t0 = time.perf_counter()
    feats = np.stack([patch_colour_features(np.asarray(source[k]["image"]), patch)
                      for k in range(len(records))])
    folds = splits_lib.load_splits(RunDir(os.path.join(workdir, PROPOSED)).splits, records.ids)
    usable = np.asarray(records.region_usable, bool)
    maps = np.zeros((len(records), grid, grid))
    for split in folds:
        train = np.concatenate([split["train"], split["val"]])
        maps[split["test"]] = colour_logistic_maps(feats, records.truth_region, usable, train,
                                                   split["test"])
    out.append(MapRow("colour_logistic", "Colour logistic model per patch (fitted on the "
                      "training folds' regions)", reference.ids, reference.sessions, maps[idx],
                      seconds=time.perf_counter() - t0))
    g0 = centre_prior(grid, config["regulator"]["g0_fraction"])
    out.append(MapRow(G0, "Fixed centre prior G0", reference.ids, reference.sessions,
                      np.broadcast_to(g0, (len(idx), grid, grid)).copy(), seconds=0.0))
    return out


# ---------------------------------------------------------------------------------------------
# The tables.


def explanation_records(maps: Sequence[MapRow], records: Any, photo: np.ndarray, n_boot: int,
                        seed: int) -> list[dict[str, Any]]:
    """Per map row: each real-region metric with its case-bootstrap CI, the images it used and
    skipped, and a paired case bootstrap against the colour heuristic on the same images (and,
    for region AUC, against G0). ``photo`` (N, rows, cols): the patches region AUC ranks."""
    at = {str(i): k for k, i in enumerate(records.ids)}
    per: dict[str, dict[str, np.ndarray]] = {}
    pos: dict[str, dict[str, int]] = {}
    for m in maps:
        idx = np.array([at[i] for i in m.ids])
        per[m.name] = metrics_lib.region_per_image(m.weights, records.truth_region[idx],
                                                   records.region_usable[idx], within=photo[idx])
        pos[m.name] = {i: k for k, i in enumerate(m.ids)}
    out = []
    for m in maps:
        idx = np.array([at[i] for i in m.ids])
        summary = metrics_lib.region_summary(
            m.weights, records.truth_region[idx], records.region_usable[idx], m.sessions,
            within=photo[idx], n_boot=n_boot, seed=seed)
        rec: dict[str, Any] = {"variant": m.name, "label": m.label, "masks": summary["masks"],
                               "map_seconds": m.seconds}
        for key, _ in EXPLANATION:
            s = summary[key]
            rec[key] = {k: s[k] for k in ("value", "ci95", "n_images", "n_sessions",
                                          "n_skipped")}
            for ref, field in ((COLOUR, "vs_colour"), (G0, "vs_centre_prior")):
                if ref == m.name or ref not in per or (ref == G0 and key != "region_auc") \
                        or key not in PAIRED:
                    continue
                align = np.array([pos[ref][i] for i in m.ids])
                rec[key][field] = metrics_lib.paired_mean_difference(
                    per[m.name][key], per[ref][key][align], m.sessions, n_boot=n_boot, seed=seed)
        out.append(rec)
    return out


def classification_records(rows: Sequence[Row], n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Per trained row: pooled ROC AUC and balanced accuracy (each fold's own threshold) with
    case-bootstrap CIs, and the paired AUC test against the proposed row."""
    out = []
    for row in rows:
        ci = results.pooled_ci(row, n_boot, seed)
        pooled = results.decision_metrics(row.labels, row.probs, row.decisions)
        rec = {"variant": row.variant.name, "label": row.variant.label,
               "n_images": int(row.labels.size), "n_cases": int(np.unique(row.sessions).size),
               "n_folds": len(row.folds),
               "train_min": None if row.train_s is None else row.train_s / 60}
        for k in ("roc_auc", "balanced_accuracy"):
            rec[k] = {"value": pooled[k], "ci95": list(ci[k]),
                      "fold_mean": float(np.mean([f[k] for f in row.folds]))}
        if row is not rows[0]:
            rec["vs_proposed"] = results.paired_auc_test(rows[0], row, n_boot, seed)
        out.append(rec)
    return out


def _ci(m: Mapping[str, Any], digits: int = 2) -> str:
    if m.get("value") is None:
        return "n/a"
    ci = m.get("ci95")
    return f"{m['value']:.{digits}f}" + (f" [{ci[0]:.{digits}f}-{ci[1]:.{digits}f}]" if ci else "")


def _p(p: float | None, n_boot: int) -> str:
    if p is None:
        return "n/a"
    return f"p={p:.3f}" if p > 0 else f"p<{1 / n_boot:.3f}"


def _vs(m: Mapping[str, Any], n_boot: int, field: str = "vs_colour") -> str:
    t = m.get(field)
    if t is None:
        return "reference"
    if t["delta"] is None:
        return "n/a"
    return f"{t['delta']:+.2f} ({_p(t['p_value'], n_boot)})"


def _compare(t: Mapping[str, Any] | None, name: str) -> str | None:
    if t is None:
        return None
    if t["delta"] is None:
        return f"not comparable with {name}"
    if t["delta"] > 0 and t["p_value"] < 0.05:
        return f"beats {name}"
    if t["delta"] < 0 and t["p_value"] < 0.05:
        return f"WORSE than {name}"
    return f"does NOT beat {name}"


def verdict(rec: Mapping[str, Any]) -> str:
    """Plainly: does this heatmap beat the colour heuristic on region AUC (paired p < 0.05),
    and the fixed centre prior?"""
    parts = [_compare(rec["region_auc"].get("vs_colour"), "the colour heuristic"),
             _compare(rec["region_auc"].get("vs_centre_prior"), "G0")]
    parts = [p for p in parts if p]
    return "; ".join(parts) if parts else "reference"


def targets(cls: Sequence[Mapping[str, Any]], exp: Sequence[Mapping[str, Any]]) -> list[str]:
    """The real-data targets, measured: met or not, with the numbers (the recipe's row where it
    ran, else its stand-in's)."""
    lines = []
    rows = {r["variant"]: r for r in exp}
    rec = rows.get("recipe", rows.get("recommended"))
    if rec is not None and rec["region_auc"]["value"] is not None:
        t = rec["region_auc"].get("vs_colour", {})
        ok = rec["region_auc"]["value"] >= 0.75 and (t.get("delta") or 0) > 0 \
            and (t.get("p_value") if t.get("p_value") is not None else 1) < 0.05
        lines.append(f"Region AUC of the {SHORT[rec['variant']].lower()} >= 0.75 and above "
                     f"the colour heuristic with paired p < 0.05: {'MET' if ok else 'NOT MET'} "
                     f"({_ci(rec['region_auc'])}, vs colour {_vs(rec['region_auc'], 1000)}).")
    best = max(cls, key=lambda r: r["roc_auc"]["value"])
    for r in cls:
        if r["variant"] in ("recipe", "recommended", PROPOSED) or r is best:
            a = r["roc_auc"]
            ok = a["value"] >= 0.75 and a["ci95"][0] > 0.6
            lines.append(f"Swede >= 5 pooled ROC AUC >= 0.75 with lower CI > 0.6, {r['label']}: "
                         f"{'MET' if ok else 'NOT MET'} ({_ci(a, 3)}).")
    return lines


def caption(rows: Sequence[Row], maps: Sequence[MapRow], n_boot: int, suite_min: float) -> str:
    c = rows[0].config
    return (
        f"AnnoCerv ({LABEL_NOTE}), {rows[0].labels.size} test photographs of "
        f"{np.unique(rows[0].sessions).size} cases pooled over {len(rows[0].folds)}-fold "
        f"cross-validation grouped by case, seed {c['seed']}. Budget: {c['grid_size']} x "
        f"{c['grid_size']} patches of {c['patch_size']} px (the photograph at its true 3:2 "
        f"aspect, letterboxed), at most {c['train']['epochs']} epochs (patience "
        f"{c['train']['patience']}); {sum(r.train_s or 0.0 for r in rows) / 60:.1f} min of "
        f"training epochs ({suite_min:.1f} min with the heatmaps and tables; evaluation "
        f"excluded) on "
        f"{' / '.join(sorted({r.device for r in rows if r.device})) or 'unrecorded devices'} "
        f"(a 2-core machine shared with other work). Cells: pooled value [95% CI, {n_boot} "
        f"case-bootstrap resamples]. The earlier stand-in is the earlier recipe without its "
        f"lambda warm-up (regulator.normalise=logits, train.learning_rate=3e-4)."
    )


def markdown(cls: Sequence[dict], exp: Sequence[dict], text: str, n_boot: int,
             target_lines: Sequence[str], figures: Mapping[str, str]) -> str:
    lines = [f"## Classification ({LABEL_NOTE})", "", f"*{text}*", "",
             "| Method | ROC AUC | Balanced acc. | dAUC vs paper model (p) | Train min |",
             "|---|---|---|---|---|"]
    for r in cls:
        t = r.get("vs_proposed")
        d = "reference" if t is None else f"{t['delta_auc']:+.3f} ({_p(t['p_value'], n_boot)})"
        tm = "n/a" if r["train_min"] is None else f"{r['train_min']:.1f}"
        lines.append(f"| {r['label']} | {_ci(r['roc_auc'], 3)} | "
                     f"{_ci(r['balanced_accuracy'], 3)} | {d} | {tm} |")
    m = exp[0]["masks"]
    lines += ["", "## Explanation: does the heatmap point at the expert's acetowhite region?", "",
              f"*{text} Masks: {m['n_usable']} of {m['n_images']} test outlines usable "
              f"({m['n_unusable']} could not be closed into a region); {m['n_with_region']} mark a "
              f"region covering at least one patch by >= {m['cut']:g}: region AUC, mass and the "
              "pointing game use those (region AUC also needs a patch outside), the rest are "
              "skipped and counted. Differences: paired case bootstrap against the colour "
              "heuristic on the images both score.*", "",
              "| Heatmap | " + " | ".join(t for _, t in EXPLANATION)
              + " | Region AUC vs colour (p) | Mass vs colour (p) | Pointing vs colour (p) "
              "| Region AUC vs G0 (p) | Images used / skipped | Verdict |",
              "|" + "---|" * (len(EXPLANATION) + 7)]
    for r in exp:
        used = f"{r['region_auc']['n_images']} / {r['region_auc']['n_skipped']}"
        lines.append("| " + " | ".join([
            r["label"], *(_ci(r[k]) for k, _ in EXPLANATION),
            *(_vs(r[k], n_boot) for k in PAIRED), _vs(r["region_auc"], n_boot, "vs_centre_prior"),
            used, verdict(r)]) + " |")
    lines += ["", "## Targets (measured)", "", *(f"- {t}" for t in target_lines)]
    if figures:
        lines += ["", "## Figures", "", *(f"- {k}: `{v}`" for k, v in figures.items())]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The figure.


def _content_rows(image: np.ndarray) -> slice:
    """Rows of a letterboxed image that hold the photograph (the true aspect, padding cut)."""
    used = np.flatnonzero(np.asarray(image).reshape(image.shape[0], -1).max(axis=1) > 0)
    return slice(int(used[0]), int(used[-1]) + 1) if used.size else slice(None)


def choose_images(maps: Sequence[MapRow], records: Any, n: int = 8) -> list[str]:
    """Up to ``n`` test photographs with a closed region, one per case, in id order."""
    at = {str(i): k for k, i in enumerate(records.ids)}
    common = set.intersection(*(set(m.ids) for m in maps))
    chosen, cases = [], set()
    for image_id in sorted(common):
        k = at[image_id]
        if records.region_usable[k] and (records.truth_region[k] >= 0.5).any() \
                and records.sessions[k] not in cases:
            chosen.append(image_id)
            cases.add(records.sessions[k])
        if len(chosen) == n:
            break
    return chosen


def figure(maps: Sequence[MapRow], source: Any, records: Any, patch_size: int, path: str,
           budget: str, *, photos: bool = True) -> str | None:
    """Rows: the chosen test photographs; columns: the photograph with the expert region
    outlined, then each heatmap over it (``photos=False``: the heatmaps alone, no pixels of
    the photographs, so the figure may be committed)."""
    from jaxcerv.reporting import viz

    chosen = choose_images(maps, records)
    if not chosen:
        return None
    at = {str(i): k for k, i in enumerate(records.ids)}
    cols = len(maps) + (1 if photos else 0)
    fig = viz.new_figure(1.9 * cols, 1.45 * len(chosen) + 0.8)
    axes = fig.subplots(len(chosen), cols, squeeze=False)
    for r, image_id in enumerate(chosen):
        k = at[image_id]
        image = np.asarray(source[k]["image"])
        keep = _content_rows(image)
        region = np.kron(records.truth_region[k], np.ones((patch_size, patch_size)))[keep]
        panels = []
        if photos:
            panels.append((image[keep], f"{image_id}\nSwede {records.swede_scores[k]}"
                           if records.swede_scores is not None else image_id))
        for m in maps:
            j = int(np.flatnonzero(m.ids == image_id)[0])
            if photos:
                shown = viz.overlay_array(image, m.weights[j], patch_size=patch_size)[keep]
            else:
                w = m.weights[j]
                span = w.max() - w.min()
                shown = np.kron((w - w.min()) / span if span > 0 else 0 * w,
                                np.ones((patch_size, patch_size)))[keep]
            panels.append((shown, SHORT.get(m.name, m.name) if r == 0 else ""))
        for c, (shown, title) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(shown, cmap=None if shown.ndim == 3 else "jet", vmin=0, vmax=1)
            ax.contour(region, levels=[0.5], colors="white", linewidths=1.0)
            ax.set_title(title, fontsize=6)
            ax.set_axis_off()
    fig.suptitle(f"White: the expert's acetowhite region (patches at least half inside). "
                 f"AnnoCerv test photographs (out of fold), {LABEL_NOTE}.\n{budget}", fontsize=7)
    return viz.save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# The outputs.


def write_outputs(suite: str, workdir: str, variants_run: Sequence[Variant], *, n_boot: int,
                  seed: int) -> dict[str, str]:
    """Both tables, the JSON of every number, the figures and index.html; returns name -> path.
    ``runner.run`` calls it for this suite in place of ``outputs.write_outputs``."""
    from jaxcerv.data import pipeline

    t0 = time.perf_counter()
    variants_run, diverged_note = results.split_diverged(workdir, variants_run)
    rows = [results.load_row(workdir, v) for v in variants_run]
    names = {r.variant.name for r in rows}
    if COLOUR not in names:
        raise RunError(f"{suite}: the colour row is every explanation test's reference; "
                       "run it too (it trains nothing)")
    source, records = pipeline.load(ml_collections.ConfigDict(rows[0].config), workdir)
    if records.truth_region is None:
        raise RunError(f"{suite}: data {rows[0].config['data']['name']!r} has no expert regions "
                       "(truth_region): use --config=annocerv")
    maps = collect_maps(workdir, rows, source, records)
    patch = rows[0].config["patch_size"]
    photo = np.stack([photograph_patches(np.asarray(source[k]["image"]), patch)
                      for k in range(len(records))])
    cls = classification_records(rows, n_boot, seed)
    exp = explanation_records(maps, records, photo, n_boot, seed)
    suite_s = sum(r.train_s or 0.0 for r in rows) + (time.perf_counter() - t0)
    text = caption(rows, maps, n_boot, suite_s / 60) + diverged_note
    c = rows[0].config
    budget = (f"Budget: {c['grid_size']} x {c['grid_size']} patches of {c['patch_size']} px, at "
              f"most {c['train']['epochs']} epochs, {suite_s / 60:.0f} min of training epochs "
              "and tables on a shared 2-core CPU.")
    out = {"md": os.path.join(workdir, f"{suite}.md"),
           "csv": os.path.join(workdir, f"{suite}.csv"),
           "json": os.path.join(workdir, f"{suite}.json")}
    figures = {}
    made = figure(maps, source, records, patch, os.path.join(workdir, f"{suite}_fig.png"), budget)
    if made:
        figures["photographs with every heatmap (not for the repository)"] = made
        out["fig"] = made
    made = figure(maps, source, records, patch, os.path.join(workdir, f"{suite}_maps.png"),
                  budget, photos=False)
    if made:
        figures["heatmaps alone, no photograph pixels"] = made
        out["maps"] = made
    target_lines = targets(cls, exp)
    with open(out["md"], "w") as f:
        f.write(markdown(cls, exp, text, n_boot, target_lines, figures))
    write_json(out["json"], {"caption": text, "label_note": LABEL_NOTE, "classification": cls,
                             "explanation": exp, "targets": target_lines, "n_boot": n_boot})
    flat = []
    for r in exp:
        c = next((x for x in cls if x["variant"] == r["variant"]), None)
        flat.append({"variant": r["variant"], "label": r["label"],
                     "roc_auc": None if c is None else c["roc_auc"]["value"],
                     "balanced_accuracy": None if c is None else c["balanced_accuracy"]["value"],
                     **{k: r[k]["value"] for k, _ in EXPLANATION},
                     "n_images_region": r["region_auc"]["n_images"], "verdict": verdict(r)})
    tables.write_csv(out["csv"], flat)
    out["index"] = outputs.write_index(suite, workdir, text, out, variants_run)
    print(json.dumps({"suite_minutes": round(suite_s / 60, 1)}), flush=True)
    return out

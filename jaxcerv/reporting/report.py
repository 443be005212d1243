"""A self-contained HTML report of a finished run: ``jaxcerv report --workdir W``.

Writes ``W/report/index.html`` and everything it shows under ``W/report/`` (relative links only), so
the folder can be zipped and mailed: the metrics table with session-bootstrap 95% intervals, the
paper's Fig. 4 b-f (ROC, score distribution, t-SNE, probability by CIN grade and by quarter of the
image-to-diagnosis window when dates exist), training curves, a gallery of test images with their
heatmap and fitted regulator, the regulator's evolution during training (Fig. 5 d-g), explanation
metrics and regulator centre errors when the data has ground truth, and the config used.

It reads only the run folder (config.json, results.json, metrics.jsonl, eval/*.npz, regulators/)
plus the dataset's images for the gallery and evolution. A cross-validation run (results.json with
"folds") gets one report per fold in ``W/report/fold_K/`` and a top-level index with the
mean +- sd table, per-fold values and links.

    jaxcerv report --workdir W [--compare W2 W3] [--gallery 8] [--epochs 1 32 48]
        [--normalisation percentile] [--cmap jet] [--alpha 0.45] [--smooth 0.5]
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxcerv.reporting import viz
from jaxcerv.runtime.rundir import RunDir, RunError, read_json

Curve = tuple[np.ndarray, np.ndarray]  # (labels, probabilities)

# Table 1 metrics in display order, with how to read them.
METRIC_NAMES = {
    "roc_auc": "ROC AUC",
    "one_minus_eer": "1 - EER",
    "balanced_accuracy": "Balanced accuracy",
    "accuracy": "Accuracy",
    "f1": "F1",
    "precision": "Precision",
    "recall": "Recall (sensitivity)",
    "specificity": "Specificity",
    "ece": "ECE (calibration error, lower is better)",
}
COUNT_NAMES = {"threshold": "Decision threshold", "n": "Images", "n_pos": "CIN2+ images"}
EXPLANATION_NAMES = {
    "pointing_game": "Pointing game (top-weighted patch is a lesion patch)",
    "lesion_auc": "Lesion AUC (patch weights rank lesion patches above other cervix patches)",
    "mass_in_cervix": "Heatmap mass inside the cervix",
    "mass_in_cervix_normal": "Heatmap mass inside the cervix, normal images",
    "pointing_game_within_1_patch": "Pointing game, within 1 patch of a lesion",
    "fitted_centre_error_patches": "Centre error of each test image's fitted Gaussian (patches)",
    "region_auc": "Region AUC (patch weights rank the expert's region above the other patches)",
    "mass_in_region": "Heatmap mass inside the expert's region",
}
REGULATOR_NAMES = {
    "centre_error_patches": "Final regulator centre error vs true cervix (patches)",
    "initial_centre_error_patches": "Initial regulator (G0) centre error (patches)",
}

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:.5em;vertical-align:top}figcaption{font-size:.9em;color:#444}
img{max-width:100%;border:1px solid #ddd}.note{color:#666;font-size:.9em}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.85em}
"""


class ReportError(RunError):
    """The report cannot be written (or a file it reads cannot be read): one line naming it."""


@dataclasses.dataclass(frozen=True)
class HeatmapStyle:
    """How patch weights are drawn (passed to ``viz.heatmap_overlay``)."""

    normalisation: str = "minmax"  # | "percentile"
    percentiles: tuple[float, float] = (2.0, 98.0)
    cmap: str = "jet"
    alpha: float = 0.45
    smooth_sigma: float = 0.0  # patches

    def describe(self) -> str:
        scale = (
            "min-max"
            if self.normalisation == "minmax"
            else f"percentile {self.percentiles[0]:g}-{self.percentiles[1]:g}"
        )
        return (
            f"normalisation {scale}, colormap {self.cmap}, alpha {self.alpha:g}, "
            f"smoothing sigma {self.smooth_sigma:g} patches"
        )


# ---------------------------------------------------------------------------------------------
# Reading a run folder.


def _read_npz(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_test_curve(workdir: str) -> Curve:
    """(labels, probabilities) on the test split; a CV run pools its folds' out-of-fold tests.

    For ``--compare``/``roc_baselines``: any finished run can be drawn on another run's ROC plot.
    """
    run = RunDir(workdir)
    path = run.eval_npz("test")
    if os.path.isfile(path):
        z = _read_npz(path)
        return z["labels"], z["probabilities"]
    folds = run.folds()
    if not folds:
        raise FileNotFoundError(f"{path} is missing and {workdir} has no fold_K folders")
    parts = [load_test_curve(fold.root) for fold in folds]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _regulator_epochs(run_dir: str) -> dict[int, str]:
    folder = RunDir(run_dir).regulators
    out = {}
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            m = re.fullmatch(r"epoch_(\d+)\.npy", name)
            if m:
                out[int(m.group(1))] = os.path.join(folder, name)
    return out


def _load_data(config: Any, data_workdir: str) -> tuple[Any, Any] | str:
    """(source, records) for the images, or the reason they cannot be shown (report goes on)."""
    from jaxcerv.data import pipeline  # heavy (TFDS); only needed for the pictures

    try:
        return pipeline.load(config, data_workdir)
    except Exception as e:  # a moved or deleted dataset must not cost the numbers and figures
        return f"{type(e).__name__}: {e}"


# ---------------------------------------------------------------------------------------------
# HTML pieces. Every piece of text from files goes through html.escape.


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _fmt(x: Any) -> str:
    if x is None:
        return "&ndash;"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int | np.integer):
        return str(int(x))
    if isinstance(x, float | np.floating):
        return f"{float(x):.3f}" if np.isfinite(x) else _esc(x)
    return _esc(x)


def _num(key: str, x: Any) -> str:
    """A numeric cell that also carries the exact value, so the table can be checked by machine."""
    attr = f' data-key="{_esc(key)}" data-value="{_esc(repr(float(x)))}"' if x is not None else ""
    return f'<td class="num"{attr}>{_fmt(x)}</td>'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """``rows`` hold finished ``<td>`` cells; the first cell of a row is a plain-text label."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        f"<tr><th>{_esc(r[0])}</th>{''.join(r[1:])}</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure_html(src: str, caption: str, width: int | None = None) -> str:
    style = f' style="width:{width}px"' if width else ""
    return (
        f'<figure{style}><a href="{_esc(src)}"><img src="{_esc(src)}" alt="{_esc(caption)}"></a>'
        f"<figcaption>{_esc(caption)}</figcaption></figure>"
    )


def _page(title: str, body: Sequence[str]) -> str:
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1><p class='note'>Generated {_esc(stamp)} by jaxcerv report.</p>"
        + "\n".join(body)
        + "</body></html>\n"
    )


def _metrics_table(results: Mapping[str, Any]) -> str:
    test, val = results.get("test", {}), results.get("val", {})
    ci = results.get("test_ci95", {}).get("ci", {})
    rows = []
    for key, name in METRIC_NAMES.items():
        if key not in test:
            continue
        lo_hi = ci.get(key)
        interval = f"{lo_hi[0]:.3f} &ndash; {lo_hi[1]:.3f}" if lo_hi else "&ndash;"
        rows.append(
            [name, _num(f"test.{key}", test[key]), f'<td class="num">{interval}</td>',
             _num(f"val.{key}", val.get(key))]
        )
    for key, name in COUNT_NAMES.items():
        if key in test:
            rows.append([name, _num(f"test.{key}", test[key]), "<td></td>",
                         _num(f"val.{key}", val.get(key))])
    boot = results.get("test_ci95", {})
    note = (
        f"<p class='note'>95% intervals: percentile bootstrap over {boot['n_units']} test "
        f"sessions ({boot['n_boot']} resamples). The threshold was chosen on validation and "
        "applied unchanged to test.</p>"
        if "n_units" in boot
        else ""
    )
    return _table(["Metric", "Test", "95% CI", "Validation"], rows) + note


def _key_value_table(values: Mapping[str, Any], names: Mapping[str, str], prefix: str) -> str:
    rows = [[names.get(k, k), _num(f"{prefix}.{k}", v)] for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool)]
    return _table(["Quantity", "Value"], rows) if rows else ""


def _explanation_table(values: Mapping[str, Any], prefix: str = "explanation") -> str:
    """One row per metric: value, its session-bootstrap 95% interval, and the test images it
    uses (which, and how many; and how many it skipped, where the metric counts them)."""
    rows = []
    for key, m in values.items():
        if key == "masks":
            continue
        ci = m.get("ci95")
        skipped = f", {m['n_skipped']} skipped" if "n_skipped" in m else ""
        rows.append([
            EXPLANATION_NAMES.get(key, key),
            _num(f"{prefix}.{key}", m.get("value")),
            f'<td class="num">{_fmt(ci[0])} &ndash; {_fmt(ci[1])}</td>' if ci else "<td>-</td>",
            f"<td>{_esc(m.get('images', ''))} ({m.get('n_images')} images, "
            f"{m.get('n_sessions')} sessions{skipped})</td>",
        ])
    return _table(["Metric", "Value", "95% CI (by session)", "Images used"], rows)


def _stopping(rows: Sequence[Mapping[str, Any]]) -> str:
    """The regulator's stopping criterion as the run logged it (``regulator.stop_kl``): how many
    training images had stopped refitting after each epoch; "" when it was off."""
    counted = [r for r in rows if "regulators_frozen" in r]
    if not counted:
        return ""
    last = counted[-1]
    per_epoch = ", ".join(f"{r['epoch']}: {r['regulators_frozen']}" for r in counted)
    n = last["regulators_frozen"]
    return (f"<p>Stopping criterion: <span data-key=\"regulator.frozen\" data-value=\"{n}\">"
            f"{n}</span> of {last['regulators_total']} training images "
            f"frozen after epoch {last['epoch']} (frozen after each epoch: {per_epoch}).</p>")


def _epoch_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    keys = [k for k in rows[0] if k != "epoch"]
    body = [[str(r["epoch"]), *(f'<td class="num">{_fmt(r.get(k))}</td>' for k in keys)]
            for r in rows]
    return (
        "<details><summary>Per-epoch log (metrics.jsonl)</summary>"
        + _table(["epoch", *keys], body)
        + "</details>"
    )


# ---------------------------------------------------------------------------------------------
# One run's report.


def _safe_name(k: int, image_id: str) -> str:
    return f"{k:03d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', image_id)[:80]}.png"


def _gallery_order(labels: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` positions alternating abnormal / normal, so both classes are shown."""
    pos, neg = list(np.flatnonzero(labels == 1)), list(np.flatnonzero(labels != 1))
    out: list[int] = []
    while len(out) < n and (pos or neg):
        for group in (pos, neg):
            if group and len(out) < n:
                out.append(int(group.pop(0)))
    return out


def _figures(
    run_dir: str, out_dir: str, test: dict, results: dict, config: Any,
    roc_baselines: Mapping[str, Curve],
) -> list[str]:
    """Fig. 4 b-f and training curves; returns HTML figures (relative paths)."""
    labels, probs = test["labels"], test["probabilities"]
    threshold = results.get("threshold")
    fig_dir = os.path.join(out_dir, "figures")
    parts = []

    def add(name: str, caption: str, written: str | None) -> None:
        if written is not None:
            parts.append(_figure_html(f"figures/{name}", caption, 520))

    name = os.path.basename(os.path.abspath(run_dir))
    curves = {f"{name} (this run)": (labels, probs), **roc_baselines}
    add("roc.png", "ROC curve on the test split (Fig. 4b)",
        viz.roc_curves(curves, os.path.join(fig_dir, "roc.png")))
    add("scores.png", "Predicted score distribution by true class (Fig. 4c)",
        viz.score_distribution(labels, probs, os.path.join(fig_dir, "scores.png"),
                               threshold=threshold))
    if len(labels) >= 3:
        add("tsne.png", "t-SNE of the image-level features (Fig. 4d)",
            viz.tsne(test["features"], labels, os.path.join(fig_dir, "tsne.png"),
                     seed=int(config.seed)))
    add("grades.png", "Predicted probability by CIN grade (Fig. 4e)",
        viz.probability_by_grade(test["grades"], probs, os.path.join(fig_dir, "grades.png")))
    add("quarters.png", "Mean probability by quarter of the image-to-diagnosis window (Fig. 4f)",
        viz.probability_by_quarter(test["days_to_diagnosis"], probs,
                                   os.path.join(fig_dir, "quarters.png"), labels=labels))
    metrics_path = RunDir(run_dir).metrics
    if RunDir(run_dir).read_metrics():
        add("training.png", "Training and validation curves",
            viz.training_curves(metrics_path, os.path.join(fig_dir, "training.png")))
    return parts


def _gallery(
    out_dir: str, test: dict, results: dict, config: Any, data: Any, n: int, style: HeatmapStyle
) -> list[str]:
    source, records = data
    row_of = {str(i): k for k, i in enumerate(records.ids)}
    threshold = float(results.get("threshold", 0.5))
    parts = []
    for k in _gallery_order(np.asarray(test["labels"]), n):
        image_id = str(test["ids"][k])
        if image_id not in row_of:
            parts.append(f"<p class='note'>{_esc(image_id)}: not in the dataset any more.</p>")
            continue
        prob, label = float(test["probabilities"][k]), int(test["labels"][k])
        grade = int(test["grades"][k])
        fit = test["regulators"][k]
        name = _safe_name(k, image_id)
        caption = (
            f"{image_id}: truth {viz.CLASS_NAMES[label]}"
            + (f", grade {grade}" if grade >= 0 else "")
            + f"; p(CIN2+) = {prob:.3f}, predicted {viz.CLASS_NAMES[int(prob >= threshold)]}"
        )
        viz.heatmap_overlay(
            np.asarray(source[row_of[image_id]]["image"]),
            test["weights"][k],
            os.path.join(out_dir, "gallery", name),
            normalisation=style.normalisation,
            percentiles=style.percentiles,
            cmap=style.cmap,
            alpha=style.alpha,
            smooth_sigma=style.smooth_sigma,
            regulator=fit if viz.regulator_is_drawable(fit) else None,
            patch_size=config.patch_size,
            title=f"{image_id}: p = {prob:.2f}",
        )
        parts.append(_figure_html(f"gallery/{name}", caption, 560))
    return parts


def _evolution(
    run_dir: str, out_dir: str, config: Any, data: Any, n: int, epochs: Sequence[int] | None
) -> tuple[list[str], str]:
    """Fig. 5 d-g for the first ``n`` training images; returns (figures, note)."""
    files = _regulator_epochs(run_dir)
    ids_path = RunDir(run_dir).train_ids
    if not files or not os.path.isfile(ids_path) or n <= 0:
        return [], "No per-epoch regulators were saved."
    available = sorted(files)
    if epochs:
        # The last panel is labelled "final", so the final epoch is always shown.
        chosen = sorted({e for e in epochs if e in files} | {available[-1]})
    else:
        chosen = viz.evolution_epochs(available)
    missing = sorted(set(epochs or ()) - set(files))
    note = f"Epochs shown: {', '.join(map(str, chosen))} (final = {available[-1]})."
    if missing:
        note += f" Not saved, so left out: {', '.join(map(str, missing))}."
    params = {e: np.load(files[e]) for e in chosen}
    train_ids = read_json(ids_path)
    source, records = data
    row_of = {str(i): k for k, i in enumerate(records.ids)}
    parts = []
    for k, image_id in enumerate(train_ids[:n]):
        if image_id not in row_of:
            continue
        drawable = {e: p[k] for e, p in params.items() if viz.regulator_is_drawable(p[k])}
        if not drawable:
            continue
        name = _safe_name(k, image_id)
        viz.regulator_evolution(
            np.asarray(source[row_of[image_id]]["image"]),
            drawable,
            os.path.join(out_dir, "evolution", name),
            config.patch_size,
            title=f"{image_id}: spatial regulator during training (2-sigma ellipse)",
        )
        parts.append(_figure_html(f"evolution/{name}", f"Training image {image_id}"))
    return parts, note


def _copy(src: str, out_dir: str) -> str | None:
    if not os.path.isfile(src):
        return None
    shutil.copyfile(src, os.path.join(out_dir, os.path.basename(src)))
    return os.path.basename(src)


def _config_section(config: Any, out_dir: str, config_file: str) -> str:
    copied = _copy(config_file, out_dir)
    link = f' (<a href="{_esc(copied)}">config.json</a>)' if copied else ""
    text = json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)
    return f"<h2>Config used</h2><p>The resolved config{link}.</p><pre>{_esc(text)}</pre>"


def _run_report(
    run_dir: str,
    out_dir: str,
    *,
    title: str,
    config: Any,
    config_file: str,
    data: Any,
    roc_baselines: Mapping[str, Curve],
    style: HeatmapStyle,
    epochs: Sequence[int] | None,
    num_gallery: int,
    num_evolution: int,
    back_link: str | None = None,
) -> str:
    run = RunDir(run_dir)
    results = read_json(run.results)
    test = _read_npz(run.eval_npz("test"))
    os.makedirs(out_dir, exist_ok=True)
    body = [f'<p><a href="{_esc(back_link)}">&larr; all folds</a></p>'] if back_link else []
    body.append(
        f"<p>Run folder <code>{_esc(os.path.abspath(run_dir))}</code>; data "
        f"<code>{_esc(config.data.name)}</code>, grid {config.grid_size} x {config.grid_size} "
        f"patches of {config.patch_size} px, regulator mode "
        f"<code>{_esc(config.regulator.mode)}</code>. Best epoch {_fmt(results.get('best_epoch'))}"
        f" of {_fmt(results.get('epochs_run'))} run.</p>"
    )
    body += ["<h2>Classification (Table 1 metrics)</h2>", _metrics_table(results)]
    if results.get("explanation"):
        body += [
            "<h2>Explanation quality (synthetic ground truth)</h2>",
            _explanation_table(results["explanation"]),
        ]
    if results.get("explanation_region"):
        masks = results["explanation_region"]["masks"]
        body += [
            "<h2>Explanation quality against the expert's regions</h2>",
            f"<p>{masks['n_usable']} of {masks['n_images']} test masks usable "
            f"({masks['n_unusable']} outlines could not be closed); {masks['n_with_region']} mark "
            f"a region covering at least one patch by {masks['cut']:g} or more (region = patch "
            "share inside the outline &ge; that cut).</p>",
            _explanation_table(results["explanation_region"], "explanation_region"),
        ]
    reg = results.get("regulator", {})
    if reg:
        body.append("<h2>Spatial regulator</h2>")
        if "final_mean" in reg:
            mean = ", ".join(f"{v:.2f}" for v in reg["final_mean"])
            body.append(
                f"<p>Mode <code>{_esc(reg.get('mode'))}</code>; mean final regulator over "
                f"training images [mu_h, mu_v, s_hh, s_hv, s_vv] = [{_esc(mean)}] (patches).</p>"
            )
        body.append(_key_value_table(reg, REGULATOR_NAMES, "regulator"))
        body.append(_stopping(run.read_metrics()))
    body += ["<h2>Figures (paper Fig. 4)</h2>",
             *_figures(run_dir, out_dir, test, results, config, roc_baselines)]
    body.append(_epoch_table(run.read_metrics()))
    if "weights" not in test:
        body.append("<h2>Images</h2><p class='note'>This model has no patch weights (a "
                    "whole-image baseline): no heatmaps, no regulator.</p>")
    elif isinstance(data, str):
        body.append(f"<h2>Images</h2><p class='note'>Dataset images unavailable, so no gallery "
                    f"or regulator evolution: {_esc(data)}</p>")
    else:
        body += [
            "<h2>Test gallery: heatmaps and fitted regulators (Fig. 5 a-b)</h2>",
            f"<p class='note'>Heatmap: {_esc(style.describe())}. White: the Gaussian fitted to "
            "the image's patch weights (2-sigma ellipse, + centre).</p>",
            *_gallery(out_dir, test, results, config, data, num_gallery, style),
        ]
        figures, note = _evolution(run_dir, out_dir, config, data, num_evolution, epochs)
        body += ["<h2>Regulator evolution during training (Fig. 5 d-g)</h2>",
                 f"<p class='note'>{_esc(note)}</p>", *figures]
    links = [name for name in (_copy(run.path(f), out_dir)
                               for f in ("results.json", "metrics.jsonl")) if name]
    if links:
        body.append("<p>Raw files: " + ", ".join(
            f'<a href="{_esc(n)}">{_esc(n)}</a>' for n in links) + "</p>")
    if results.get("runtime"):
        body.append("<details><summary>Runtime</summary><pre>"
                    + _esc(json.dumps(results["runtime"], indent=2)) + "</pre></details>")
    body.append(_config_section(config, out_dir, config_file))
    path = os.path.join(out_dir, "index.html")
    with open(path, "w") as f:
        f.write(_page(title, body))
    return path


def _cv_index(
    workdir: str, out_dir: str, results: dict, fold_pages: Sequence[str], config: Any,
    config_file: str, roc_baselines: Mapping[str, Curve],
) -> str:
    summary = results.get("test", {})
    mean, sd = summary.get("mean", {}), summary.get("sd", {})
    folds = results["folds"]
    header = ["Metric", "Mean", "SD",
              *(f"Fold {k}" for k in range(len(folds)))]
    rows = []
    for key, name in {**METRIC_NAMES, **COUNT_NAMES}.items():
        if key in mean:
            rows.append([name, _num(f"mean.{key}", mean[key]), _num(f"sd.{key}", sd.get(key)),
                         *(_num(f"fold_{k}.{key}", f["test"].get(key))
                           for k, f in enumerate(folds))])
    links = " &middot; ".join(
        f'<a href="{_esc(p)}">fold {k}</a>' for k, p in enumerate(fold_pages)
    )
    curves = {f"Fold {k}": load_test_curve(RunDir(workdir).fold(k).root)
              for k in range(len(folds))}
    viz.roc_curves({**curves, **roc_baselines}, os.path.join(out_dir, "figures", "roc.png"))
    body = [
        f"<p>{len(folds)}-fold cross-validation grouped by session; run folder "
        f"<code>{_esc(os.path.abspath(workdir))}</code>.</p>",
        "<h2>Test metrics over folds (mean &plusmn; sample SD)</h2>",
        _table(header, rows),
        f"<p>Per-fold reports: {links}</p>",
        "<h2>ROC curves</h2>",
        _figure_html("figures/roc.png", "Each fold's test ROC curve (Fig. 4b)", 520),
    ]
    copied = _copy(RunDir(workdir).results, out_dir)
    if copied:
        body.append(f'<p>Raw file: <a href="{_esc(copied)}">{_esc(copied)}</a></p>')
    body.append(_config_section(config, out_dir, config_file))
    path = os.path.join(out_dir, "index.html")
    with open(path, "w") as f:
        f.write(_page(f"jaxcerv cross-validation report: {os.path.basename(workdir)}", body))
    return path


def write_report(
    workdir: str,
    *,
    roc_baselines: Mapping[str, Curve] | None = None,
    style: HeatmapStyle | None = None,
    epochs: Sequence[int] | None = None,
    num_gallery: int = 8,
    num_evolution: int = 3,
    data: tuple[Any, Any] | None = None,
    out_dir: str | None = None,
) -> str:
    """Write ``workdir/report/`` (or ``out_dir``) and return the path of its ``index.html``.

    ``roc_baselines``: extra named (labels, probabilities) curves for the ROC plot (see
    ``load_test_curve``). ``epochs``: regulator-evolution epochs (default 1, 32, 48 when run;
    the final epoch is always added). ``data``: the (source, records) of ``pipeline.load`` when
    the caller already has them; otherwise they are loaded from the run's config. A folder
    that cannot be written is a ``ReportError`` naming it (the run folder may be read-only).
    """
    style = style or HeatmapStyle()
    roc_baselines = dict(roc_baselines or {})
    run = RunDir(workdir)
    config_file = run.config_file()
    config = run.read_config()
    if data is None:
        data = _load_data(config, os.path.dirname(config_file))
    out_dir = out_dir or run.report
    try:
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)  # no stale figures from an earlier report
        os.makedirs(out_dir)
    except OSError as e:
        raise ReportError(f"cannot write the report to {out_dir} ({e.strerror or e}): pass "
                          "--out=DIR") from None
    results = read_json(run.results)
    try:
        return _write_pages(workdir, run, out_dir, results, config, config_file, data, style,
                            roc_baselines, epochs, num_gallery, num_evolution)
    except OSError as e:
        name = os.fspath(e.filename) if e.filename else ""
        if name and not os.path.abspath(name).startswith(os.path.abspath(out_dir)):
            raise ReportError(f"cannot read {name} ({e.strerror or e})") from None
        raise ReportError(f"cannot write the report: {name or out_dir} ({e.strerror or e}): "
                          "pass --out=DIR") from None


def _write_pages(workdir, run, out_dir, results, config, config_file, data, style,
                 roc_baselines, epochs, num_gallery, num_evolution) -> str:
    common = dict(config=config, config_file=config_file, data=data, style=style, epochs=epochs,
                  num_gallery=num_gallery, num_evolution=num_evolution)
    name = os.path.basename(os.path.abspath(workdir))
    if "folds" not in results:
        return _run_report(workdir, out_dir, title=f"jaxcerv report: {name}",
                           roc_baselines=roc_baselines, **common)
    pages = []
    for k in range(len(results["folds"])):
        _run_report(
            run.fold(k).root, os.path.join(out_dir, f"fold_{k}"),
            title=f"jaxcerv report: {name}, fold {k}", roc_baselines=roc_baselines,
            back_link="../index.html", **common,
        )
        pages.append(f"fold_{k}/index.html")
    return _cv_index(workdir, out_dir, results, pages, config, config_file, roc_baselines)

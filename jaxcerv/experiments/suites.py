"""The paper's experiments from one command: Table 1, Table 2, the regulator ablations, and the
small-data comparison of issue 13.

  python -m jaxcerv.experiments.suites --suite=table1 --config=benchmark --workdir=runs/table1
  jaxcerv experiments --suite=regulator --config=benchmark --workdir=runs/reg [--variants=a,b]
  jaxcerv experiments --suite=small_data --config=iarc_atlas --workdir=runs/small

Every variant is the base config plus a few overrides (``suite_variants``), trained and tested by
``train.train_and_evaluate`` in ``W/<variant>/`` (so resuming, locking and the checks hold per
variant and per fold), all on the same session-grouped splits: the first variant's
``splits.json`` is handed to the others, and all share one dataset folder (``W/tfds`` unless
``data.data_dir`` is set). A finished variant (its ``results.json`` written) is skipped on a
rerun; an unfinished one resumes fold by fold from its checkpoints.

Then ``W/<suite>.md`` / ``.csv`` (mean +- sd over folds, a session-bootstrap 95% CI of the
pooled test predictions, a paired session bootstrap of each row's ROC AUC against the proposed
model), ``W/<suite>_fig4a.png`` (normalised multi-metric comparison), ``_fig4b.png`` (ROC of
every annotation-free approach), ``_fig5c.png`` (the same test images with and without the
regulator, lesions outlined), ``W/<suite>.html``, and ``W/index.html`` linking every suite run in W.

A new model family joins as a variant: an entry in ``suite_variants`` whose overrides select it;
anything ``train.train_and_evaluate`` (or another entry point that writes the same run layout, as
``handcrafted.run_baseline`` does) can run, the runner can tabulate.

Rows whose ``model.init_from`` is ``PRETRAINED`` start from the suite's own encoders: before any
row, ``pretrain.pretrain`` trains one per fold into ``W/pretrain/`` (each without its fold's test
sessions; resumed, skipped once finished), and every row of the suite then uses its
``splits.json``, so no row is tested on a case that an encoder saw.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from jaxcerv.configs import default
from jaxcerv.evaluation import metrics as metrics_lib
from jaxcerv.runtime.rundir import RunDir, RunError, read_json
from jaxcerv.training import configcheck

SUITES = ("table1", "table2", "regulator", "small_data", "real_heatmaps")
# (results key, column title); the classification metrics of Table 1.
METRICS = (
    ("balanced_accuracy", "Balanced acc."),
    ("f1", "F1"),
    ("precision", "Precision"),
    ("recall", "Recall"),
    ("roc_auc", "ROC AUC"),
    ("one_minus_eer", "1-EER"),
)
# Heatmap metrics against the synthetic ground truth (explanation_summary's names).
EXPLANATION = (
    ("lesion_auc", "Lesion AUC in cervix"),
    ("mass_in_cervix", "Mass in cervix"),
    ("pointing_game", "Pointing game"),
)
PROPOSED = "proposed"
# model.init_from of a row that starts from the suite's per-fold pretrained encoders.
PRETRAINED = "<the suite's per-fold pretrained encoders>"
PRETRAIN_DIR = "pretrain"
# Steps the pretrained encoder is held still: two epochs of the atlas recipe (about 50 training
# images per fold, batch 8), so the fresh weight MLP and classifier settle before it moves.
PRETRAINED_FREEZE_STEPS = 14


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row: a name (its folder), a label (its table row), config overrides and the entry
    point that runs it (``train``: train.train_and_evaluate; ``handcrafted``:
    handcrafted.run_baseline)."""

    name: str
    label: str
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    entry: str = "train"


def _nearest_divisor(side: int, target: float, minimum: int = 8) -> int:
    """The patch size nearest ``target`` that tiles ``side`` px exactly (and is >= minimum)."""
    divisors = [d for d in range(minimum, side + 1) if side % d == 0]
    return min(divisors, key=lambda d: (abs(d - target), d))


def suite_variants(suite: str, config: ml_collections.ConfigDict) -> list[Variant]:
    """The rows of a suite; the first is the proposed model (every paired test's reference)."""
    no_reg = {"regulator.mode": "none"}
    proposed = Variant(PROPOSED, "Proposed (patch-wise + iterative regulator)")
    if suite == "table1":
        whole = [
            Variant("lenet", "LeNet (Vasudha'18)", {"model.family": "lenet", **no_reg}),
            Variant("alexnet", "CaffeNet/AlexNet (Xu'17)", {"model.family": "alexnet", **no_reg}),
            Variant("alexnet_crop1200", "CaffeNet/AlexNet, Crop 1200",
                    {"model.family": "alexnet", "data.center_crop": 0.5, **no_reg}),
            *(Variant(f"vgg16_fz{n}", f"VGG16 FZ{n}",
                      {"model.family": "vgg16", "model.freeze_blocks": n, **no_reg})
              for n in (1, 2, 3, 4)),
            Variant("inception", "Inception-style", {"model.family": "inception", **no_reg}),
        ]
        return [
            proposed,
            Variant("no_regulator", "Patch-wise, no regulator", no_reg),
            Variant("abmil", "Gated-attention MIL (ABMIL), not in the paper",
                    {"model.family": "abmil", **no_reg}),
            *whole,
        ]
    if suite == "table2":
        side = config.grid_size * config.patch_size
        rows = [proposed]
        for factor in (0.5, 1, 2, 4):
            p = _nearest_divisor(side, factor * config.patch_size)
            rows.append(Variant(f"patch{p}", f"Patch {p} px ({factor:g}x), G0 = 1/4 of the side",
                                {"patch_size": p, "grid_size": side // p,
                                 "regulator.g0_fraction": 0.25}))
        rows.append(Variant("concat", "Concatenation instead of mean",
                            {"model.aggregation": "concat"}))
        return rows
    if suite == "regulator":
        return [
            proposed,
            Variant("fixed", "Fixed regulator (G0 for every image)", {"regulator.mode": "fixed"}),
            Variant("no_regulator", "No regulator", no_reg),
            Variant("logits", "Eq. 6 on the min-max normalised logits (no sigmoid saturation)",
                    {"regulator.normalise": "logits"}),
            Variant("logits_lr3e-4", "Eq. 6 on the logits, learning rate 3e-4",
                    {"regulator.normalise": "logits", "train.learning_rate": 3e-4}),
            Variant("one_sided", "One-sided spatial loss", {"regulator.loss": "one_sided"}),
            Variant("one_sided_logits", "One-sided spatial loss on the logits",
                    {"regulator.loss": "one_sided", "regulator.normalise": "logits"}),
            Variant("one_sided_lam0.1", "One-sided spatial loss, lambda 0.1",
                    {"regulator.loss": "one_sided", "regulator.lam": 0.1}),
            Variant("mass_outside", "Share of weight mass outside the regulator",
                    {"regulator.loss": "mass_outside"}),
            Variant("fit_weights", "Fitted to the raw weights (the paper's fit)",
                    {"regulator.fit_on": "weights"}),
            Variant("fit_normalised", "Fitted to the min-max normalised weights",
                    {"regulator.fit_on": "normalised"}),
        ]
    if suite == "small_data":
        pre = {"model.init_from": PRETRAINED,
               "train.freeze_encoder_steps": PRETRAINED_FREEZE_STEPS}
        return [
            Variant(PROPOSED, "Proposed, encoder pretrained per fold (the small-data recipe)", pre),
            Variant("scratch", "Proposed from scratch"),
            Variant("scratch_plain", "Proposed from scratch, no class weights, no augmentation",
                    {"train.class_weight": "none", "data.augment": False}),
            Variant("pretrained_lam0.001", "Proposed, pretrained, lambda 0.001",
                    {**pre, "regulator.lam": 0.001}),
            Variant("abmil_pretrained", "ABMIL from the pretrained encoder, not in the paper",
                    {**pre, "model.family": "abmil", **no_reg}),
            Variant("handcrafted", "Hand-crafted colour and texture + logistic regression",
                    entry="handcrafted"),
        ]
    if suite == "real_heatmaps":
        from jaxcerv.experiments import real_heatmaps
        return real_heatmaps.variants(config)
    raise ValueError(f"--suite={suite!r}: use one of {SUITES}")


def variant_config(base: ml_collections.ConfigDict, variant: Variant) -> ml_collections.ConfigDict:
    """``base`` with the variant's dotted overrides applied (a copy)."""
    config = ml_collections.ConfigDict(base.to_dict())
    for dotted, value in variant.overrides.items():
        *parents, leaf = dotted.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


# ---------------------------------------------------------------------------------------------
# Running the variants.


# Settings a family never reads: a suite may change them (e.g. the whole-image baselines' CPU
# budget) without invalidating a finished run of that family.
_WHOLE_IMAGE_ONLY = ("model.input_size", "model.width", "model.freeze_blocks", "data.center_crop")
UNREAD = {"patchwise": (*_WHOLE_IMAGE_ONLY, "model.attention_hidden"),
          "abmil": _WHOLE_IMAGE_ONLY}


def _comparable(config: dict) -> dict:
    config = json.loads(json.dumps(config))
    for dotted in UNREAD.get(config["model"]["family"], ()):
        section, key = dotted.split(".")
        config[section].pop(key, None)
    return config


def with_defaults(recorded: dict) -> dict:
    """A recorded config with every setting added since filled in at its default: a run made
    before a setting existed ran as its default does (new settings default to the old
    behaviour), so adding one does not invalidate finished rows."""
    def fill(node: dict, defaults: dict) -> dict:
        out = dict(defaults)
        for k, v in node.items():
            out[k] = fill(v, defaults[k]) if isinstance(v, dict) and isinstance(
                defaults.get(k), dict) else v
        return out

    return fill(recorded, default.get_config().to_dict())


def _check_same_config(run: RunDir, config: ml_collections.ConfigDict, name: str) -> None:
    if os.path.exists(run.config) and _comparable(with_defaults(read_json(run.config))) != \
            _comparable(config.to_dict()):
        raise RunError(
            f"{run.root} was run with another config than variant {name!r} has now: delete that "
            "folder to run it again, or use another --workdir"
        )


def pretrain_encoders(base: ml_collections.ConfigDict, workdir: str) -> tuple[str, str]:
    """The suite's per-fold encoders in ``W/pretrain`` (trained or resumed there; skipped once
    finished): returns the ``model.init_from`` template and the splits file they were made for."""
    from jaxcerv.training import pretrain
    config = ml_collections.ConfigDict(base.to_dict())
    config.pretrain.per_fold = True
    run = RunDir(os.path.join(workdir, PRETRAIN_DIR))
    _check_same_config(run, config, PRETRAIN_DIR)
    if os.path.exists(run.results):
        print(f"[0] {PRETRAIN_DIR}: finished earlier, skipped", flush=True)
        results = read_json(run.results)
    else:
        print(f"[0] {PRETRAIN_DIR}: one encoder per fold, without the fold's test sessions ...",
              flush=True)
        t0 = time.perf_counter()
        results = pretrain.pretrain(config, run.root)
        print(f"[0] {PRETRAIN_DIR}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    return results["encoder"], results["splits"]


def run_suite(
    suite: str,
    base: ml_collections.ConfigDict,
    workdir: str,
    only: Sequence[str] = (),
    train_fn: Callable[[ml_collections.ConfigDict, str], Any] | None = None,
) -> list[Variant]:
    """Train and test every variant of ``suite`` (or those named in ``only``) in ``workdir``;
    returns the variants run. Progress goes to stdout, one line per variant."""
    from jaxcerv.experiments import handcrafted
    if train_fn is None:
        from jaxcerv.training import train
        train_fn = train.train_and_evaluate
    entries = {"train": train_fn, "handcrafted": handcrafted.run_baseline}
    variants = suite_variants(suite, base)
    if only:
        unknown = sorted(set(only) - {v.name for v in variants})
        if unknown:
            raise ValueError(f"--variants: {unknown} are not in suite {suite!r}; it has "
                             f"{[v.name for v in variants]}")
        variants = [v for v in variants if v.name in only or v.name == PROPOSED]
    base = ml_collections.ConfigDict(base.to_dict())
    os.makedirs(workdir, exist_ok=True)
    if not base.data.data_dir:
        base.data.data_dir = os.path.abspath(os.path.join(workdir, "tfds"))
    configs = [variant_config(base, v) for v in variants]
    pretrained = [c.model.init_from == PRETRAINED for c in configs]
    for v, c, pre in zip(variants, configs, pretrained, strict=True):
        try:  # the encoders do not exist yet: check the rest before spending time on them
            configcheck.check_config(variant_config(c, Variant("", "", {"model.init_from": ""}))
                                     if pre else c)
        except configcheck.ConfigError as e:
            raise configcheck.ConfigError(f"variant {v.name!r}: {e}") from e
    if any(pretrained):
        template, splits_file = pretrain_encoders(base, workdir)
        for c, pre in zip(configs, pretrained, strict=True):
            c.data.splits_file = c.data.splits_file or splits_file
            if pre:
                c.model.init_from = template
    first_splits = RunDir(os.path.join(workdir, variants[0].name)).splits
    t_suite = time.perf_counter()
    for k, (v, c) in enumerate(zip(variants, configs, strict=True)):
        run = RunDir(os.path.join(workdir, v.name))
        if k > 0 and not c.data.splits_file:
            c.data.splits_file = os.path.abspath(first_splits)
        _check_same_config(run, c, v.name)
        head = f"[{k + 1}/{len(variants)}] {v.name}"
        if os.path.exists(run.results):
            print(f"{head}: finished earlier, skipped", flush=True)
            continue
        print(f"{head}: {v.label} ...", flush=True)
        t0 = time.perf_counter()
        entries[v.entry](c, run.root)
        print(f"{head}: done in {time.perf_counter() - t0:.0f} s "
              f"(suite so far {time.perf_counter() - t_suite:.0f} s)", flush=True)
    return variants


# ---------------------------------------------------------------------------------------------
# Collecting the runs: pure numpy from the run folders.


@dataclasses.dataclass
class Row:
    """One variant's results: per-fold test metrics and the pooled per-image test predictions."""

    variant: Variant
    folds: list[dict[str, float]]
    ids: np.ndarray
    labels: np.ndarray
    probs: np.ndarray
    decisions: np.ndarray  # each image decided at its own fold's threshold
    sessions: np.ndarray
    weights: np.ndarray | None  # (N, G, G) heatmaps; None for a whole-image model
    explanation: dict[str, float] | None = None
    config: dict | None = None
    train_s: float | None = 0.0  # epochs' wall time summed over folds; None: no epochs
    device: str = ""  # what trained it, e.g. "1 x cpu" (results.json's runtime)


def _fold_dirs(run: RunDir) -> list[RunDir]:
    results = read_json(run.results)
    return [run.fold(k) for k in range(len(results["folds"]))] if "folds" in results else [run]


def load_row(workdir: str, variant: Variant) -> Row:
    """A variant's folds from ``workdir/<name>``: its fold results and test predictions."""
    run = RunDir(os.path.join(workdir, variant.name))
    if not os.path.exists(run.results):
        raise RunError(f"{run.root} has no results.json: run the suite (it resumes) first")
    folds, parts, epochs, device = [], [], [], ""
    for fold in _fold_dirs(run):
        res = read_json(fold.results)
        folds.append(res["test"])
        epochs += [r.get("epoch_time_s", 0.0) for r in fold.read_metrics()]
        if "runtime" in res:
            device = f"{res['runtime']['devices']} x {res['runtime']['device_kind']}"
        with np.load(fold.eval_npz("test")) as z:
            part = {k: z[k] for k in z.files}
        part["decisions"] = (part["probabilities"] >= res["threshold"]).astype(np.int64)
        parts.append(part)
    pooled = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return Row(
        variant=variant,
        folds=folds,
        ids=pooled["ids"].astype(str),
        labels=pooled["labels"].astype(np.int64),
        probs=pooled["probabilities"].astype(np.float64),
        decisions=pooled["decisions"],
        sessions=pooled["sessions"].astype(str),
        weights=pooled.get("weights"),
        config=read_json(run.config),
        train_s=float(sum(epochs)) if epochs else None,  # the hand-crafted fit has no epochs
        device=device,
    )


def decision_metrics(labels: np.ndarray, probs: np.ndarray, decisions: np.ndarray) -> dict:
    """Table 1's metrics from per-image decisions (each fold's own threshold) and scores."""
    y, d = np.asarray(labels).astype(bool), np.asarray(decisions).astype(bool)
    tp, fp = np.sum(d & y), np.sum(d & ~y)
    fn, tn = np.sum(~d & y), np.sum(~d & ~y)
    recall = tp / (tp + fn) if tp + fn else 0.0
    specificity = tn / (tn + fp) if tn + fp else 0.0
    precision = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "balanced_accuracy": float(0.5 * (recall + specificity)),
        "f1": float(f1),
        "precision": float(precision),
        "recall": float(recall),
        "roc_auc": metrics_lib.roc_auc(y.astype(int), probs),
        "one_minus_eer": 1.0 - metrics_lib.equal_error_rate(y.astype(int), probs),
    }


def _session_draws(sessions: np.ndarray, labels: np.ndarray, n_boot: int, seed: int):
    """Index arrays of session-bootstrap resamples that hold both classes."""
    _, unit = np.unique(sessions, return_inverse=True)
    members = [np.flatnonzero(unit == u) for u in range(unit.max() + 1)]
    rng = np.random.default_rng(seed)
    drawn = 0
    while drawn < n_boot:
        idx = np.concatenate([members[u] for u in rng.integers(0, len(members), len(members))])
        if 0 < labels[idx].sum() < idx.size:
            drawn += 1
            yield idx


def pooled_ci(row: Row, n_boot: int, seed: int = 0, alpha: float = 0.05) -> dict:
    """Percentile interval of every Table 1 metric over session-bootstrap resamples of the pooled
    test predictions."""
    samples: dict[str, list[float]] = {k: [] for k, _ in METRICS}
    for idx in _session_draws(row.sessions, row.labels, n_boot, seed):
        m = decision_metrics(row.labels[idx], row.probs[idx], row.decisions[idx])
        for k in samples:
            samples[k].append(m[k])
    q = (alpha / 2, 1 - alpha / 2)
    return {k: tuple(float(x) for x in np.quantile(v, q)) for k, v in samples.items()}


def paired_auc_test(reference: Row, row: Row, n_boot: int, seed: int = 0) -> dict:
    """Paired session bootstrap of AUC(row) - AUC(reference) on the images both predicted:
    the difference, its 95% interval and the two-sided p-value (twice the smaller tail)."""
    common, ir, jr = np.intersect1d(reference.ids, row.ids, return_indices=True)
    if common.size == 0:
        raise RunError(f"{row.variant.name} and {reference.variant.name} share no test images")
    y, s = reference.labels[ir], reference.sessions[ir]
    p_ref, p_row = reference.probs[ir], row.probs[jr]
    diffs = np.array([
        metrics_lib.roc_auc(y[idx], p_row[idx]) - metrics_lib.roc_auc(y[idx], p_ref[idx])
        for idx in _session_draws(s, y, n_boot, seed)
    ])
    delta = metrics_lib.roc_auc(y, p_row) - metrics_lib.roc_auc(y, p_ref)
    p = min(1.0, 2.0 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)))
    lo, hi = np.quantile(diffs, (0.025, 0.975))
    return {"delta_auc": float(delta), "ci95": (float(lo), float(hi)), "p_value": float(p),
            "n_images": int(common.size)}


def add_explanation(row: Row, records: Any, n_boot: int, seed: int) -> None:
    """The pooled heatmap metrics of a row against the dataset's ground truth (synthetic only)."""
    if row.weights is None or records is None or records.truth_cervix is None:
        return
    at = {str(i): k for k, i in enumerate(records.ids)}
    idx = np.array([at[i] for i in row.ids])
    summary = metrics_lib.explanation_summary(
        row.weights, records.truth_lesion[idx], records.truth_cervix[idx], row.labels,
        row.sessions, n_boot=n_boot, seed=seed,
    )
    row.explanation = {k: summary[k] for k, _ in EXPLANATION}


# ---------------------------------------------------------------------------------------------
# Writing the tables, figures and index.


def _mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)


def table_rows(rows: Sequence[Row], n_boot: int, seed: int) -> list[dict[str, Any]]:
    """One dict per row: per metric mean / sd over folds, pooled value and CI; the explanation
    metrics; the paired AUC test against the first (proposed) row."""
    out = []
    for row in rows:
        ci = pooled_ci(row, n_boot, seed)
        pooled = decision_metrics(row.labels, row.probs, row.decisions)
        rec: dict[str, Any] = {"variant": row.variant.name, "label": row.variant.label,
                               "n_folds": len(row.folds), "n_images": int(row.labels.size),
                               "n_boot": n_boot,
                               "train_min": None if row.train_s is None else row.train_s / 60}
        for k, _ in METRICS:
            rec[f"{k}_mean"], rec[f"{k}_sd"] = _mean_sd([f[k] for f in row.folds])
            rec[f"{k}_pooled"] = pooled[k]
            rec[f"{k}_ci_lo"], rec[f"{k}_ci_hi"] = ci[k]
        for k, _ in EXPLANATION:
            e = (row.explanation or {}).get(k)
            rec[k] = None if e is None else e["value"]
            rec[f"{k}_ci_lo"], rec[f"{k}_ci_hi"] = (None, None) if not e or not e["ci95"] \
                else e["ci95"]
        if row is not rows[0]:
            test = paired_auc_test(rows[0], row, n_boot, seed)
            rec["delta_auc"], rec["delta_auc_p"] = test["delta_auc"], test["p_value"]
        else:
            rec["delta_auc"], rec["delta_auc_p"] = None, None
        out.append(rec)
    return out


def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def pretrain_minutes(workdir: str) -> float | None:
    """Wall time of the suite's pretraining epochs, all folds (None: the suite has none)."""
    path = os.path.join(workdir, PRETRAIN_DIR, "results.json")
    if not os.path.exists(path):
        return None
    return sum(f["train_s_total"] for f in read_json(path)["folds"]) / 60


def caption(suite: str, rows: Sequence[Row], n_boot: int, pretrain_min: float | None = None
            ) -> str:
    c = rows[0].config
    folds = len(rows[0].folds)
    protocol = (f"{folds}-fold session-grouped cross-validation" if folds > 1
                else "one session-grouped train/val/test split")
    rule = c["eval"]["threshold_criterion"]
    thr = (f"fixed threshold {c['eval']['threshold']:g}" if rule == "fixed"
           else f"threshold by {rule} on each fold's validation split")
    from jaxcerv.model.networks import INPUT_SIZES

    whole = sorted({(r.config["model"]["width"],
                     r.config["model"]["input_size"] or INPUT_SIZES[r.config["model"]["family"]])
                    for r in rows if r.config["model"]["family"] in INPUT_SIZES})
    # One sentence per channel width, listing its input sizes (the published sizes differ).
    sized = "".join(
        f" Whole-image CNNs: input {'/'.join(str(s) for w2, s in whole if w2 == width)} px, "
        f"channels x{width:g} of the published net."
        for width in sorted({w for w, _ in whole})
    )
    return (
        f"{suite}: data {c['data']['name']} ({rows[0].labels.size} test images pooled), "
        f"{protocol}, "
        f"{c['train']['epochs']} epochs (patience {c['train']['patience']}), {thr}. Cells: mean "
        f"+- sd over folds [95% CI of the pooled test predictions, {n_boot} session-bootstrap "
        "resamples]. dAUC: pooled ROC AUC minus the proposed model's, p from a paired session "
        "bootstrap. Heatmap metrics n/a: a model without patch weights (whole-image CNN, "
        "hand-crafted features) or data "
        "without lesion and cervix ground truth (real images)."
        + sized
        + f" Train min: the row's epochs, wall time summed over folds (evaluation excluded); "
        f"{sum(r.train_s or 0.0 for r in rows) / 60:.0f} min for all rows on "
        f"{' / '.join(sorted({r.device for r in rows if r.device})) or 'unrecorded devices'}."
        + ("" if pretrain_min is None else
           f" Before the rows, the per-fold encoders' pretraining took {pretrain_min:.1f} min "
           "(each fold's encoder never saw its test cases).")
    )


def markdown_table(records: Sequence[dict], text: str) -> str:
    head = ["Method", *(t for _, t in METRICS), *(t for _, t in EXPLANATION), "dAUC (p)",
            "Train min"]
    lines = [f"*{text}*", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for r in records:
        cells = [r["label"]]
        for k, _ in METRICS:
            sd = "" if r[f"{k}_sd"] is None else f" +- {r[f'{k}_sd']:.3f}"
            cells.append(f"{r[f'{k}_mean']:.3f}{sd} [{r[f'{k}_ci_lo']:.3f}-{r[f'{k}_ci_hi']:.3f}]")
        for k, _ in EXPLANATION:
            ci = "" if r[f"{k}_ci_lo"] is None else \
                f" [{r[f'{k}_ci_lo']:.2f}-{r[f'{k}_ci_hi']:.2f}]"
            cells.append("n/a" if r[k] is None else f"{r[k]:.2f}{ci}")
        if r["delta_auc"] is None:
            cells.append("reference")
        else:  # a p of 0 means no resample crossed zero: below 1 / n_boot
            p = r["delta_auc_p"]
            cells.append(f"{r['delta_auc']:+.3f} (p" + (f"={p:.3f})" if p > 0
                                                       else f"<{1 / r['n_boot']:.3f})"))
        cells.append("n/a" if r["train_min"] is None else f"{r['train_min']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: str, records: Sequence[dict]) -> None:
    keys = list(records[0])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in records:
            w.writerow({k: "" if r.get(k) is None else r[k] for k in keys})


def normalised_scores(records: Sequence[dict]) -> np.ndarray:
    """(rows, metrics) pooled metric values divided by each metric's best row: Fig. 4a."""
    values = np.array([[r[f"{k}_pooled"] for k, _ in METRICS] for r in records], np.float64)
    best = values.max(axis=0)
    return np.divide(values, best, out=np.zeros_like(values), where=best > 0)


def fig4a(records: Sequence[dict], path: str) -> str:
    from jaxcerv.reporting import viz
    scores = normalised_scores(records)
    fig = viz._figure(max(7.0, 1.3 * len(METRICS) + 0.2 * len(records)), 4.8)
    ax = fig.add_subplot()
    width = 0.8 / len(records)
    x = np.arange(len(METRICS))
    for i, r in enumerate(records):
        ax.bar(x + (i - (len(records) - 1) / 2) * width, scores[i], width, label=r["label"])
    ax.set_xticks(x, [t for _, t in METRICS])
    ax.set(ylabel="Pooled value / best row's", ylim=(0, 1.05),
           title="Normalised multi-metric comparison (Fig. 4a)")
    ax.legend(fontsize="x-small", ncol=2, loc="lower left")
    return viz._save(fig, path)


def fig5c(with_reg: Row, without: Row, source: Any, records: Any, patch_size: int,
          path: str, n: int = 4) -> str | None:
    """The same CIN2+ test images: heatmap with the regulator beside the heatmap without, the
    lesion patches outlined (Fig. 5c)."""
    from jaxcerv.reporting import viz
    if with_reg.weights is None or without.weights is None or records.truth_lesion is None:
        return None
    at = {str(i): k for k, i in enumerate(records.ids)}
    common = [i for i in with_reg.ids if i in set(without.ids)]
    chosen = [i for i in common if records.labels[at[i]] == 1
              and records.truth_lesion[at[i]].any()][:n]
    if not chosen:
        return None
    fig = viz._figure(10.0, 3.4 * len(chosen))
    axes = fig.subplots(len(chosen), 3, squeeze=False)
    for r, image_id in enumerate(chosen):
        k = at[image_id]
        image = np.asarray(source[k]["image"])
        lesion = np.kron(records.truth_lesion[k], np.ones((patch_size, patch_size)))
        axes[r, 0].imshow(image)
        axes[r, 0].set_title(f"{image_id} (CIN2+)")
        for c, row in ((1, with_reg), (2, without)):
            j = int(np.flatnonzero(row.ids == image_id)[0])
            axes[r, c].imshow(viz.overlay_array(image, row.weights[j], patch_size=patch_size))
            axes[r, c].set_title(row.variant.label, fontsize="small")
        for c in range(3):
            axes[r, c].contour(lesion, levels=[0.5], colors="white", linewidths=1.2)
            axes[r, c].set_axis_off()
    fig.suptitle("Fig. 5c: heatmaps with and without the regulator (white: lesion patches)")
    return viz._save(fig, path)


def _load_data(config: dict, workdir: str) -> tuple[Any, Any] | tuple[None, None]:
    from jaxcerv.data import pipeline

    try:
        return pipeline.load(ml_collections.ConfigDict(config), workdir)
    except Exception as e:  # noqa: BLE001 - the tables do not need the pixels
        print(f"warning: dataset unavailable ({e}); no heatmap metrics or Fig. 5c", flush=True)
        return None, None


def write_outputs(suite: str, workdir: str, variants: Sequence[Variant], *, n_boot: int,
                  seed: int) -> dict[str, str]:
    """Tables, figures and index.html for the finished variants; returns name -> path."""
    from jaxcerv.reporting import viz
    rows = [load_row(workdir, v) for v in variants]
    data: dict[str, tuple[Any, Any]] = {}
    for row in rows:
        if row.weights is None:
            continue
        key = json.dumps([row.config["grid_size"], row.config["patch_size"]])
        if key not in data:
            data[key] = _load_data(row.config, workdir)
        add_explanation(row, data[key][1], n_boot, seed)
    records = table_rows(rows, n_boot, seed)
    text = caption(suite, rows, n_boot, pretrain_minutes(workdir))
    out = {"md": os.path.join(workdir, f"{suite}.md"), "csv": os.path.join(workdir, f"{suite}.csv")}
    with open(out["md"], "w") as f:
        f.write(markdown_table(records, text))
    write_csv(out["csv"], records)
    out["fig4a"] = fig4a(records, os.path.join(workdir, f"{suite}_fig4a.png"))
    free = {r.variant.label: (r.labels, r.probs) for r in rows}  # all are annotation-free
    out["fig4b"] = viz.roc_curves(free, os.path.join(workdir, f"{suite}_fig4b.png"))
    by_name = {r.variant.name: r for r in rows}
    if PROPOSED in by_name and "no_regulator" in by_name:
        c = by_name[PROPOSED].config
        source, recs = data.get(json.dumps([c["grid_size"], c["patch_size"]]), (None, None))
        if source is not None:
            made = fig5c(by_name[PROPOSED], by_name["no_regulator"], source, recs,
                         c["patch_size"], os.path.join(workdir, f"{suite}_fig5c.png"))
            if made:
                out["fig5c"] = made
    out["index"] = write_index(suite, workdir, text, out, variants)
    return out


def write_index(suite: str, workdir: str, text: str, out: Mapping[str, str],
                variants: Sequence[Variant]) -> str:
    rel = {k: os.path.basename(v) for k, v in out.items()}
    with open(out["md"]) as f:
        table = f.read()
    parts = [f"<h1>jaxcerv experiments: {html.escape(suite)}</h1>",
             f"<p>{html.escape(text)}</p>",
             f"<p>Table: <a href='{rel['md']}'>{rel['md']}</a>, "
             f"<a href='{rel['csv']}'>{rel['csv']}</a></p>",
             f"<pre>{html.escape(table)}</pre>"]
    for key, title in (("fig4a", "Fig. 4a: normalised multi-metric comparison"),
                       ("fig4b", "Fig. 4b: ROC of every annotation-free approach (pooled test)"),
                       ("fig5c", "Fig. 5c: with and without the regulator")):
        if key in rel:
            parts.append(f"<h2>{title}</h2><img src='{rel[key]}' style='max-width:100%'>")
    parts.append("<h2>Each variant's report</h2><ul>" + "".join(
        f"<li><a href='{html.escape(v.name)}/report/index.html'>{html.escape(v.label)}</a></li>"
        for v in variants) + "</ul>")
    page = os.path.join(workdir, f"{suite}.html")
    _write_html(page, parts)
    suites = [x for x in SUITES if os.path.exists(os.path.join(workdir, f"{x}.html"))]
    index = os.path.join(workdir, "index.html")
    _write_html(index, ["<h1>jaxcerv experiments</h1><ul>"] + [
        f"<li><a href='{x}.html'>{x}</a>: <a href='{x}.md'>{x}.md</a>, "
        f"<a href='{x}.csv'>{x}.csv</a></li>" for x in suites] + ["</ul>"])
    return index


def _write_html(path: str, parts: Sequence[str]) -> None:
    with open(path, "w") as f:
        f.write("<!doctype html><meta charset='utf-8'><title>jaxcerv experiments</title>"
                "<body style='font-family:sans-serif'>" + "\n".join(parts) + "</body>")


# ---------------------------------------------------------------------------------------------
# Command line (python -m jaxcerv.experiments.suites, jaxcerv experiments).


def _fail(message: str, status: int) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def define_flags() -> Callable[[list[str]], None]:
    """Define the command's absl flags (on call, not on import, so that importing this module
    next to ``jaxcerv.main`` defines no flag twice) and return its ``main``."""
    from absl import flags
    from ml_collections import config_flags

    from jaxcerv import configs
    suite_flag = flags.DEFINE_enum("suite", "table1", SUITES, "Which experiment suite to run.")
    config_flag = config_flags.DEFINE_config_file(
        "config", configs.resolve("default"), "Base config: a built-in name or a file."
    )
    workdir_flag = flags.DEFINE_string("workdir", "runs/experiments",
                                       "Suite folder: W/<variant>/..., W/<suite>.md, ...")
    only_flag = flags.DEFINE_list("variants", [], "Only these variants (and the proposed model).")

    def main(argv: list[str]) -> None:
        del argv
        if not flags.FLAGS["verbosity"].present:
            from absl import logging

            logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
        run(suite_flag.value, config_flag.value, workdir_flag.value, only_flag.value)

    return main


def run(suite: str, config: ml_collections.ConfigDict, workdir: str,
        only: Sequence[str] = ()) -> dict[str, str]:
    """The whole command: check, run the variants, write their reports, the tables and figures.
    Expected failures end with one ``error:`` line (exit 2 for a usage problem, else 1)."""
    try:
        configcheck.check_config(config)
    except configcheck.ConfigError as e:
        _fail(str(e), 2)
    from jaxcerv.reporting import report
    from jaxcerv.runtime import progress
    try:
        variants = run_suite(suite, config, workdir, only)
        for v in variants:
            run_dir = os.path.join(workdir, v.name)
            if not os.path.exists(os.path.join(run_dir, "report", "index.html")):
                report.write_report(run_dir)
        from jaxcerv.experiments import real_heatmaps
        writer = real_heatmaps.write_outputs if suite == real_heatmaps.SUITE else write_outputs
        with progress.announce(f"writing {suite}.md, the figures and index.html"):
            out = writer(suite, workdir, variants, n_boot=max(config.eval.bootstrap, 1),
                         seed=config.seed)
    except (ValueError, RunError) as e:
        message = " ".join(str(e).split())
        _fail(message, 2 if "config." in message or "--" in message else 1)
    with open(out["md"]) as f:
        print(f.read())
    print("index:", out["index"], flush=True)
    return out


if __name__ == "__main__":
    from absl import app

    from jaxcerv import configs
    sys.argv = [sys.argv[0], *configs.resolve_args(sys.argv[1:])]  # config_flags reads sys.argv
    app.run(define_flags())

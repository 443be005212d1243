"""A suite's finished rows, collected from their run folders, and their statistics: Table 1's
metrics from per-image decisions, session-bootstrap intervals of the pooled test predictions, and
the paired session bootstrap of each row's ROC AUC against the proposed model. Pure numpy."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxcerv.evaluation import metrics as metrics_lib
from jaxcerv.experiments.suites import Variant
from jaxcerv.runtime.rundir import RunDir, RunError, read_json

DIVERGED = "diverged.txt"  # in W/<row>/: why the row has no results (the runner writes it)


def diverged(workdir: str, name: str) -> str | None:
    """The divergence message of row ``name``, or None when it did not diverge."""
    path = os.path.join(workdir, name, DIVERGED)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return f.read().strip()


def split_diverged(workdir: str, variants: Sequence[Variant]) -> tuple[list[Variant], str]:
    """(the rows to tabulate, the caption's sentence naming each diverged row and why): every
    suite's tables leave a diverged row out and say so."""
    why = {v.name: diverged(workdir, v.name) for v in variants}
    note = "".join(f" Diverged, no result: {v.label} ({why[v.name]})"
                   for v in variants if why[v.name] is not None)
    return [v for v in variants if why[v.name] is None], note

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


def fold_dirs(run: RunDir) -> list[RunDir]:
    results = read_json(run.results)
    return [run.fold(k) for k in range(len(results["folds"]))] if "folds" in results else [run]


def load_row(workdir: str, variant: Variant) -> Row:
    """A variant's folds from ``workdir/<name>``: its fold results and test predictions."""
    run = RunDir(os.path.join(workdir, variant.name))
    if not os.path.exists(run.results):
        raise RunError(f"{run.root} has no results.json: run the suite (it resumes) first")
    folds, parts, epochs, device = [], [], [], ""
    for fold in fold_dirs(run):
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


def pooled_ci(row: Row, n_boot: int, seed: int = 0, alpha: float = 0.05) -> dict:
    """Percentile interval of every Table 1 metric over session-bootstrap resamples of the pooled
    test predictions."""
    samples: dict[str, list[float]] = {k: [] for k, _ in METRICS}
    for idx in metrics_lib.SessionResampler(row.sessions).image_draws(n_boot, seed,
                                                                        labels=row.labels):
        m = decision_metrics(row.labels[idx], row.probs[idx], row.decisions[idx])
        for k in samples:
            samples[k].append(m[k])
    return {k: metrics_lib.percentile_interval(v, alpha) for k, v in samples.items()}


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
        for idx in metrics_lib.SessionResampler(s).image_draws(n_boot, seed, labels=y)
    ])
    delta = metrics_lib.roc_auc(y, p_row) - metrics_lib.roc_auc(y, p_ref)
    p = min(1.0, 2.0 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)))
    return {"delta_auc": float(delta), "ci95": metrics_lib.percentile_interval(diffs),
            "p_value": float(p),
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

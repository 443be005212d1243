"""A suite's table: one record per row (mean +- sd over folds, pooled value and its interval,
the explanation metrics, the paired AUC test), its caption, Markdown and CSV."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxcerv.experiments.results import (
    EXPLANATION,
    METRICS,
    Row,
    decision_metrics,
    paired_auc_test,
    pooled_ci,
)
from jaxcerv.experiments.suites import PRETRAIN_DIR
from jaxcerv.runtime.rundir import read_json


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

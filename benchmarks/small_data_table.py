"""The "Small data sets" table: cross-validated runs side by side (writes nothing).

    .venv/bin/python benchmarks/small_data_table.py NAME=WORKDIR [NAME=WORKDIR ...]

Each WORKDIR is a k-fold run of `jaxcerv.main` or `jaxcerv.experiments.handcrafted`
(fold_K/eval/test.npz).
Per row: the test ROC AUC mean +- sd over folds, the pooled out-of-fold ROC AUC with its 95%
bootstrap interval over sessions (1000 resamples), the folds' selected epochs and the images.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from jaxcerv.evaluation import metrics as metrics_lib
from jaxcerv.experiments import handcrafted
from jaxcerv.runtime.rundir import RunDir, read_json


def row(name: str, workdir: str, n_boot: int) -> str:
    run = RunDir(workdir)
    folds = run.folds()
    aucs = [read_json(f.results)["test"]["roc_auc"] for f in folds]
    bal = [read_json(f.results)["test"]["balanced_accuracy"] for f in folds]
    epochs = [read_json(f.results).get("best_epoch", "-") for f in folds]
    pooled = handcrafted.pooled_test_metrics(run, n_boot=n_boot, seed=0)
    lo, hi = pooled["roc_auc_ci95"]
    return (f"| {name} | {np.mean(aucs):.3f} +- {np.std(aucs, ddof=1):.3f} | "
            f"{pooled['roc_auc']:.3f} ({lo:.3f}-{hi:.3f}) | "
            f"{np.mean(bal):.3f} +- {np.std(bal, ddof=1):.3f} | "
            f"{' '.join(f'{a:.2f}' for a in aucs)} | {' '.join(map(str, epochs))} | "
            f"{pooled['n_images']} / {pooled['n_sessions']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=WORKDIR")
    parser.add_argument("--n_boot", type=int, default=1000)
    args = parser.parse_args()
    print("| run | test ROC AUC, mean +- sd over folds | pooled out-of-fold ROC AUC (95% CI) | "
          "balanced accuracy | per fold | selected epochs | images / cases |")
    print("|---|---|---|---|---|---|---|")
    for spec in args.runs:
        name, _, workdir = spec.partition("=")
        if not os.path.isdir(workdir):
            raise SystemExit(f"error: {workdir} is not a folder")
        try:
            print(row(name, workdir, args.n_boot))
        except (OSError, KeyError, metrics_lib.MetricsError) as e:
            raise SystemExit(f"error: {workdir}: {e}; is it a finished k-fold run?") from None


if __name__ == "__main__":
    main()

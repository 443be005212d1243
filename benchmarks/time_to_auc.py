"""Time to result: epochs and wall seconds until the validation ROC AUC first reaches a target.

Usage:
  .venv/bin/python benchmarks/time_to_auc.py [--seeds 0 1 2] [--target 0.88] \
      [--config benchmark] [--out runs/time_to_auc] [-- --config.train.epochs=10 ...]

Trains ``jaxcerv train --config=<config>`` once per seed (one after the other) in
``<out>/seed_<s>``, timing each epoch line as it is printed, and writes ``<out>/result.json``:
per seed the first epoch whose validation AUC reaches ``--target`` and the wall seconds from
the command's start to that line (``null`` when never reached), the epochs run, the selected
epoch and the test ROC AUC of the selected model, plus the load average before and after. On
synthetic data it also counts the test records whose label ``label_noise`` flipped and gives the
test ROC AUC against the class the pixels show, and the ceiling the flips leave (the drawn class
scored against the records): a seed's shortfall can then be told apart from its labels' noise.
A benchmark, not a timed test: the seconds depend on the machine and on its other tenants.
Nothing tracked is written; an existing seed folder is resumed by ``jaxcerv train``, so point
``--out`` at a fresh folder for a fresh measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

from jaxcerv.data import synthetic
from jaxcerv.evaluation import metrics

EPOCH_LINE = re.compile(r"^epoch (\d+): .*\| val loss \S+ auc ([0-9.]+|nan)")


def drawn_class_scores(workdir: str) -> dict:
    """On synthetic data: the test split's flipped records, the selected model's test ROC AUC
    against the drawn class, and the recorded labels' ceiling (the drawn class as the score).
    Empty for other data."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    if config["data"]["name"] != "synthetic_cervix":
        return {}
    test = np.load(os.path.join(workdir, "eval", "test.npz"))
    drawn = synthetic.drawn_labels(
        test["ids"], seed=config["data"]["synthetic_seed"], grid=config["grid_size"],
        patch=config["patch_size"], knobs=synthetic.Knobs.from_mapping(config["data"]["synthetic"]))
    return {
        "test_flipped_labels": int((drawn != test["labels"]).sum()),
        "test_roc_auc_drawn_class": metrics.roc_auc(drawn, test["probabilities"]),
        "test_roc_auc_ceiling": metrics.roc_auc(test["labels"], drawn),
    }


def time_one_seed(config: str, seed: int, workdir: str, target: float,
                  extra: list[str]) -> dict:
    """Train one seed, timing its epoch lines; the per-seed JSON row."""
    cmd = [sys.executable, "-m", "jaxcerv.cli.app", "train", f"--config={config}",
           f"--workdir={workdir}", f"--config.seed={seed}", *extra]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    reached = None
    val_aucs = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            m = EPOCH_LINE.match(line)
            if m:
                auc = float(m.group(2))
                val_aucs.append(auc)
                if reached is None and auc >= target:
                    reached = {"epoch": int(m.group(1)),
                               "wall_s": round(time.perf_counter() - t0, 1)}
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"error: seed {seed}: `{' '.join(cmd)}` exited {proc.returncode}; "
                         f"its output is above")
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    return {
        "seed": seed,
        "target_val_auc": target,
        "epochs_to_target": None if reached is None else reached["epoch"],
        "wall_s_to_target": None if reached is None else reached["wall_s"],
        "val_auc_per_epoch": val_aucs,
        "epochs_run": results.get("epochs_run"),
        "selected_epoch": results.get("best_epoch"),
        "test_roc_auc": results["test"]["roc_auc"],
        "dead_encoder": results.get("dead_encoder"),
        **drawn_class_scores(workdir),
        "wall_s_total": round(wall, 1),
        "load_average_before_after": [load_before, os.getloadavg()[0]],
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="benchmark")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--target", type=float, default=0.88)
    parser.add_argument("--out", default="runs/time_to_auc")
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    rows = [time_one_seed(args.config, s, os.path.join(args.out, f"seed_{s}"), args.target,
                          extra) for s in args.seeds]
    out = {"config": args.config, "overrides": extra, "cpu_count": os.cpu_count(),
           "seeds": rows}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "result.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))
    print(f"written: {path}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Running a suite: every row trained and tested by ``train.train_and_evaluate`` in
``W/<row>/`` (so resuming, locking and the checks hold per row and per fold), all on the same
session-grouped splits: the first row's ``splits.json`` is handed to the others, and all share
one dataset folder (``W/tfds`` unless ``data.data_dir`` is set). A finished row (its
``results.json`` written) is skipped on a rerun; an unfinished one resumes fold by fold. A row
other than the first that diverges is an ablation's result, not the suite's end: its message goes
to ``W/<row>/diverged.txt``, the suite goes on, and the table names it without numbers.

Rows whose ``model.init_from`` is ``suites.PRETRAINED`` start from the suite's own encoders:
before any row, ``pretrain.pretrain`` trains one per fold into ``W/pretrain/`` (resumed, skipped
once finished), and every row then uses its ``splits.json``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from jaxcerv.experiments.results import DIVERGED, diverged
from jaxcerv.experiments.suites import (
    PRETRAIN_DIR,
    PRETRAINED,
    PROPOSED,
    Variant,
    suite_variants,
    variant_config,
)
from jaxcerv.runtime.rundir import RunDir, RunError, read_json
from jaxcerv.training import configcheck

# Settings a family never reads: a suite may change them (e.g. the whole-image baselines' CPU
# budget) without invalidating a finished run of that family.
_WHOLE_IMAGE_ONLY = ("model.input_size", "model.width", "model.freeze_blocks", "data.center_crop")
UNREAD = {"patchwise": (*_WHOLE_IMAGE_ONLY, "model.attention_hidden"),
          "abmil": _WHOLE_IMAGE_ONLY}
# What only the spatial loss reads: a run without a regulator (every whole-image baseline) never
# computes it into its loss, so a new recipe default leaves those rows finished.
SPATIAL_LOSS_ONLY = ("regulator.loss", "regulator.logit_decay", "regulator.normalise")


def _comparable(config: dict) -> dict:
    config = json.loads(json.dumps(config))
    unread = UNREAD.get(config["model"]["family"], ())
    if config["regulator"]["mode"] == "none":
        unread = (*unread, *SPATIAL_LOSS_ONLY)
    for dotted in unread:
        section, key = dotted.split(".")
        config[section].pop(key, None)
    return config


def check_same_config(run: RunDir, config: ml_collections.ConfigDict, name: str) -> None:
    recorded = read_json(run.config) if os.path.exists(run.config) else None
    if recorded is not None and _comparable(configcheck.with_defaults(recorded)) != \
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
    check_same_config(run, config, PRETRAIN_DIR)
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
    from jaxcerv.training.train import DivergenceError
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
        check_same_config(run, c, v.name)
        head = f"[{k + 1}/{len(variants)}] {v.name}"
        if os.path.exists(run.results):
            print(f"{head}: finished earlier, skipped", flush=True)
            continue
        if diverged(workdir, v.name) is not None:
            print(f"{head}: diverged earlier ({os.path.join(run.root, DIVERGED)}; delete the "
                  "folder to train it again), skipped", flush=True)
            continue
        print(f"{head}: {v.label} ...", flush=True)
        t0 = time.perf_counter()
        try:
            entries[v.entry](c, run.root)
        except DivergenceError as e:
            if k == 0:  # the reference of every paired test: nothing to compare with
                raise
            os.makedirs(run.root, exist_ok=True)
            with open(os.path.join(run.root, DIVERGED), "w") as f:
                f.write(f"{e}\n")
            print(f"{head}: diverged, recorded in {os.path.join(run.root, DIVERGED)}; the "
                  "suite goes on", flush=True)
            continue
        print(f"{head}: done in {time.perf_counter() - t0:.0f} s "
              f"(suite so far {time.perf_counter() - t_suite:.0f} s)", flush=True)
    return variants


def run(suite: str, config: ml_collections.ConfigDict, workdir: str,
        only: Sequence[str] = ()) -> dict[str, str]:
    """The whole suite: check, run the rows, write their reports, the tables and figures;
    returns name -> path of what it wrote. Raises ConfigError, ValueError or RunError."""
    configcheck.check_config(config)
    from jaxcerv.experiments import outputs, real_heatmaps
    from jaxcerv.reporting import report
    from jaxcerv.runtime import progress
    variants = run_suite(suite, config, workdir, only)
    for v in variants:
        run_dir = os.path.join(workdir, v.name)
        if diverged(workdir, v.name) is not None:
            continue
        if not os.path.exists(os.path.join(run_dir, "report", "index.html")):
            report.write_report(run_dir)
    writer = real_heatmaps.write_outputs if suite == real_heatmaps.SUITE else outputs.write_outputs
    with progress.announce(f"writing {suite}.md, the figures and index.html"):
        return writer(suite, workdir, variants, n_boot=max(config.eval.bootstrap, 1),
                      seed=config.seed)

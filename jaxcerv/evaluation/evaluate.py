"""Evaluation: predictions over a split, the test metrics (pure), and saving / drawing apart.

The decision threshold is chosen on validation predictions only and applied to test, so test
labels can never move it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxcerv.data import pipeline
from jaxcerv.evaluation import metrics as metrics_lib
from jaxcerv.runtime import parallel
from jaxcerv.runtime.rundir import RunDir


def process_batches(
    config, source, indices, *, batch_size, epoch, train, labels=None
) -> Iterator[dict]:
    """This process's share of each global batch (``labels`` of ``indices``: needed in training
    when ``config.data.balanced_sampling`` is on)."""
    return pipeline.batches(
        source,
        indices,
        batch_size=batch_size,
        seed=config.seed,
        epoch=epoch,
        shuffle=train,
        augment=pipeline.Augment.from_config(config.data) if train else None,
        drop_remainder=train,
        num_workers=config.data.num_workers,
        prefetch=config.data.prefetch,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
        balance=labels if train and config.data.get("balanced_sampling") else None,
    )


def predict_split(config, eval_step, params, source, indices, mesh) -> dict[str, np.ndarray]:
    """Run ``eval_step`` over a split; the padded last batch is masked out, never dropped."""
    parallel.check_batch_size(config.eval.batch_size, mesh, "config.eval.batch_size")
    chunks: dict[str, list[np.ndarray]] = {}
    for host_batch in process_batches(
        config, source, indices, batch_size=config.eval.batch_size, epoch=0, train=False
    ):
        batch = parallel.to_global(host_batch, mesh)
        out = parallel.to_host(
            {**eval_step(params, batch), "mask": batch["mask"], "index": batch["index"]}
        )
        keep = out.pop("mask").astype(bool)
        for k, v in out.items():
            chunks.setdefault(k, []).append(np.asarray(v)[keep])
    result = {k: np.concatenate(v) for k, v in chunks.items()}
    order = np.argsort(result.pop("index"), kind="stable")
    return {k: v[order] for k, v in result.items()}


def bce(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy from logits (numerically stable, numpy)."""
    z, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def test_metrics(
    config: ml_collections.ConfigDict,
    val: dict[str, np.ndarray] | None,
    test: dict[str, np.ndarray],
) -> dict[str, Any]:
    """Threshold on validation (or ``config.eval.threshold`` when the criterion is "fixed"),
    metrics of both splits at it, bootstrap CIs on test.

    ``val`` / ``test``: ``probabilities``, ``labels``, ``sessions`` (and, for the explanation
    metrics on synthetic data, ``weights``, ``regulators``, ``truth_cervix``, ``truth_lesion``;
    on real expert regions, ``weights``, ``truth_region`` and ``region_usable``).
    ``val`` is None when the protocol has no validation set (``data.val_fraction=0``).
    """
    if config.eval.threshold_criterion == "fixed":
        threshold = float(config.eval.threshold)
    else:
        threshold = metrics_lib.choose_threshold(
            val["labels"], val["probabilities"], config.eval.threshold_criterion
        )
    results: dict[str, Any] = {"threshold": threshold}
    if val is not None:
        results["val"] = metrics_lib.binary_metrics(
            val["labels"], val["probabilities"], threshold, split="val"
        )
    results["test"] = metrics_lib.binary_metrics(
        test["labels"], test["probabilities"], threshold, split="test"
    )
    results["test_ci95"] = metrics_lib.bootstrap_ci(
        test["labels"],
        test["probabilities"],
        threshold,
        test["sessions"],
        n_boot=config.eval.bootstrap,
        seed=config.seed,
    )
    if "truth_cervix" in test and "weights" in test:
        results["explanation"] = explanation(config, test)
    if "truth_region" in test and "weights" in test:
        results["explanation_region"] = metrics_lib.region_summary(
            test["weights"], test["truth_region"], test["region_usable"], test["sessions"],
            n_boot=config.eval.bootstrap, seed=config.seed,
        )
    return results


def explanation(config: ml_collections.ConfigDict, test: dict[str, np.ndarray]) -> dict:
    """Heatmap quality against the synthetic ground truth, each metric as ``{"value", "ci95",
    "n_images", "n_sessions", "images"}`` (the interval resampled by session; "images" says
    which test images the metric uses)."""
    w, cervix, lesion = test["weights"], test["truth_cervix"], test["truth_lesion"]
    out = metrics_lib.explanation_summary(
        w, lesion, cervix, test["labels"], test["sessions"],
        n_boot=config.eval.bootstrap, seed=config.seed,
    )
    has_lesion = lesion.reshape(len(w), -1).any(axis=1)
    sessions = test["sessions"]
    out["pointing_game_within_1_patch"] = {
        "value": metrics_lib.pointing_game(w, lesion) if has_lesion.any() else None,
        "ci95": None, "n_images": int(has_lesion.sum()),
        "n_sessions": len(np.unique(sessions[has_lesion])),
        "images": "images with a lesion patch; hit = top-weighted patch within 1 patch of one",
    }
    out["fitted_centre_error_patches"] = {
        "value": metrics_lib.centre_error(test["regulators"], cervix), "ci95": None,
        "n_images": len(w), "n_sessions": len(np.unique(sessions)),
        "images": "all images: centre of the Gaussian fitted to each heatmap vs the true cervix",
    }
    return out


_MAPS = ("truth_cervix", "truth_lesion", "truth_region")  # per-patch truth: in records.npz
_TRUTH = (*_MAPS, "region_status", "region_usable", "swede_scores")


def with_records(pred: dict[str, np.ndarray], records: pipeline.Records, idx: np.ndarray) -> dict:
    """A split's predictions joined with what the data says about its images (the ground truth
    the source has: synthetic truth_cervix / truth_lesion; annocerv truth_region (n, grid, grid)
    patch fractions, region_status, region_usable, swede_scores; see `pipeline.Records`)."""
    out = {
        **pred,
        "ids": records.ids[idx],
        "labels": records.labels[idx],
        "grades": records.grades[idx],
        "sessions": records.sessions[idx],
        "days_to_diagnosis": records.days_to_diagnosis[idx],
    }
    for key in _TRUTH:
        value = getattr(records, key)
        if value is not None:
            out[key] = value[idx]
    return out


def save_predictions(run: RunDir, split: str, pred: dict[str, np.ndarray]) -> None:
    """``W/eval/<split>.npz``: per-image predictions with ids, labels, grades, sessions (and
    annocerv's region_status, region_usable, swede_scores; the per-patch truth maps stay in the
    dataset's records.npz)."""
    keep = {k: v for k, v in pred.items() if k not in ("logits", *_MAPS)}
    np.savez_compressed(run.eval_npz(split), **keep)

"""The training loop: ``train_and_evaluate(config, workdir)`` trains and tests every fold.

The loop is a short list of named steps (``_train_fold``): set up, resume, then per epoch train,
validate, select, log, checkpoint; at the end restore the selected model and evaluate it. The
state, optimizer and jitted steps are in ``steps.py``; checkpoints in ``checkpointing.py``; the
run folder's layout in ``rundir.py``; metrics in ``evaluate.py``. It never writes the report:
``main`` does that after training, so nothing here imports the report or predict.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxcerv.data import pipeline, splits
from jaxcerv.evaluation import evaluate
from jaxcerv.evaluation import metrics as metrics_lib
from jaxcerv.model import losses, regulator
from jaxcerv.model import networks as model_lib
from jaxcerv.runtime import parallel, rundir
from jaxcerv.runtime import progress as reporting
from jaxcerv.runtime.rundir import RunDir, RunError, acquire_lock, release_lock, write_json
from jaxcerv.training import configcheck, steps
from jaxcerv.training.checkpointing import CheckpointError, Checkpoints
from jaxcerv.training.metric_log import MetricWriter
from jaxcerv.training.resident import ResidentImages


class DivergenceError(RunError):
    """A non-finite loss, gradient, parameter or regulator: the run stops before saving it."""


class Interrupted(Exception):
    """Ctrl-C (SIGINT) during a run, with where it stopped (``epoch 3``, ``epoch 2 of fold 1``):
    the epoch in progress is not saved and a rerun resumes from the last saved one."""

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where


@dataclasses.dataclass
class Selection:
    """Model selection and early stopping: the best epoch so far and the epochs since.

    An epoch is better when its validation ROC AUC is higher, ties broken by a lower validation
    BCE. The BCE alone stalls for epochs while the patch weights are still spreading out, even as
    the ranking (AUC) improves, and stopped runs before they learned.
    """

    best_val_auc: float = -1.0
    best_val_loss: float = float("inf")
    best_epoch: int = 0
    bad_epochs: int = 0

    def improves(self, val_auc: float, val_loss: float) -> bool:
        return (val_auc, -val_loss) > (self.best_val_auc, -self.best_val_loss)

    def update(self, epoch: int, val_auc: float, val_loss: float) -> bool:
        """Record an epoch's validation result; True when it is the new best."""
        if self.improves(val_auc, val_loss):
            self.best_val_auc, self.best_val_loss, self.best_epoch = val_auc, val_loss, epoch
            self.bad_epochs = 0
            return True
        self.bad_epochs += 1
        return False


@dataclasses.dataclass
class LoopState:
    """What the loop checkpoints beside the train state (JSON in each checkpoint's meta)."""

    epoch: int = 0
    selection: Selection = dataclasses.field(default_factory=Selection)
    stopped: bool = False

    def to_meta(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> LoopState:
        return cls(meta["epoch"], Selection(**meta["selection"]), meta["stopped"])


@dataclasses.dataclass
class Fold:
    """One training run's fixed pieces: its folder, data split, model and jitted steps."""

    config: ml_collections.ConfigDict
    run: RunDir
    source: Any
    records: pipeline.Records
    split: dict[str, np.ndarray]
    mesh: Any
    model: model_lib.PatchWiseModel
    train_step: Any
    eval_step: Any
    initial_state: steps.TrainState
    resident: ResidentImages | None = None  # config.data.resident: the train split on the devices


def _set_up(config, run: RunDir, source, records, split, mesh) -> Fold:
    train_idx = split["train"]
    parallel.check_batch_size(config.train.batch_size, mesh)
    if len(train_idx) < config.train.batch_size:
        raise RunError(
            f"the train split has {len(train_idx)} images, fewer than one batch of "
            f"config.train.batch_size={config.train.batch_size}: lower the batch size"
        )
    model = model_lib.from_config(config)
    per_epoch = len(train_idx) // config.train.batch_size
    tx = steps.make_optimizer(config, per_epoch)
    weights = losses.class_weights(records.labels[train_idx],
                                   config.train.get("class_weight", "none"))
    train_step, eval_step = steps.jit_steps(config, model, tx, mesh, weights, per_epoch)
    state = parallel.replicated_init(
        functools.partial(steps.create_train_state, config, model, tx, len(train_idx)),
        mesh,
        jax.random.PRNGKey(config.seed),
    )
    if parallel.is_writer():
        run.makedirs()
        write_json(run.train_ids, records.ids[train_idx].tolist())
    resident = None
    if config.data.get("resident"):
        try:
            resident = ResidentImages(source, train_idx, mesh)
        except ValueError as e:
            raise RunError(str(e)) from None
        logging.info("resident training data: %d images, %.0f MB per device", resident.n,
                     resident.nbytes / 2**20)
    return Fold(config, run, source, records, split, mesh, model, train_step, eval_step, state,
                resident)


def _drop_steps_after(ckpt: Checkpoints, epoch: int) -> None:
    """Steps newer than the epoch we resume from (a save cut short, or a corrupt newest step
    we fell back from) would collide with the replayed epochs: remove them."""
    for kind, manager in ckpt.managers.items():
        for step in ckpt.steps(kind):
            if step > epoch:
                logging.info("removing checkpoints/%s/%d, newer than the resumed epoch", kind,
                             step)
                manager.delete(step)


def _ensure_best(ckpt: Checkpoints, state: steps.TrainState, progress: LoopState) -> None:
    """The selected epoch must be in ``checkpoints/best``, intact. A run killed (or out of disk)
    between the ``latest`` and ``best`` commits lacks it: re-save it from ``latest``."""
    best = progress.selection.best_epoch
    if best == 0:
        return
    try:
        ckpt.restore("best", best, state)
        return
    except CheckpointError as e:
        problem = str(e) if best in ckpt.steps("best") else f"checkpoints/best/{best} is missing"
    if best == progress.epoch:
        source = state
    elif best in ckpt.steps("latest"):
        source, _ = ckpt.restore("latest", best, state)
    else:
        raise CheckpointError(
            f"{problem}, and no other copy of the selected epoch {best} exists: delete "
            f"{ckpt.run.checkpoints} and rerun to train again"
        )
    print(f"warning: {problem}; re-saved it from checkpoints/latest/{best}", flush=True)
    if best in ckpt.steps("best"):
        ckpt.managers["best"].delete(best)
    ckpt.save("best", best, source, {**progress.to_meta(), "epoch": best})


def _resume(ckpt: Checkpoints, fold: Fold) -> tuple[steps.TrainState, LoopState]:
    """The newest usable ``latest`` checkpoint (falling back past a corrupt one), or a fresh
    state; a fresh run forgets any metrics an earlier, checkpoint-less attempt logged."""
    restored = ckpt.restore_newest("latest", fold.initial_state)
    if restored is None:
        if parallel.is_writer():
            fold.run.truncate_metrics(0)
        return fold.initial_state, LoopState()
    state, meta = restored
    progress = LoopState.from_meta(meta)
    # The patience may have changed since (an allowed change): a stop is decided by today's.
    progress.stopped = progress.selection.bad_epochs >= fold.config.train.patience
    print(f"Resuming from epoch {progress.epoch} (checkpoint in {fold.run.checkpoints})",
          flush=True)
    _drop_steps_after(ckpt, progress.epoch)
    _ensure_best(ckpt, state, progress)
    if parallel.is_writer():
        fold.run.truncate_metrics(progress.epoch)
    return state, progress


def _check_healthy(healthy: jax.Array, epoch: int, step: int, config) -> None:
    if not bool(healthy):
        raise DivergenceError(
            f"training diverged at epoch {epoch}, step {step} (learning rate "
            f"{config.train.learning_rate:g}): the loss, a gradient, a parameter or a regulator "
            f"is not finite, or the BCE exceeds config.train.max_bce="
            f"{config.train.max_bce:g}; nothing of epoch {epoch} was saved. Rerun with a lower "
            "--config.train.learning_rate in a new --workdir (or add --config.train.restart=True "
            "to start this one over)"
        )


def _train_epoch(
    fold: Fold, state, epoch: int, *, first: bool = False
) -> tuple[steps.TrainState, dict[str, float]]:
    """One pass over the training split; stops on the first non-finite step (divergence guard).

    The health of step i is read after step i+1 is dispatched, so the check costs no
    pipeline stall; a non-finite step is never saved because saving happens after the epoch.
    ``first``: the first epoch this process runs, whose first step compiles (announced).
    """
    config = fold.config
    n_steps = len(fold.split["train"]) // config.train.batch_size
    if fold.resident is not None:  # global batches gathered on the devices
        batches = fold.resident.batches(
            batch_size=config.train.batch_size, seed=config.seed, epoch=epoch,
            balance=fold.records.labels[fold.split["train"]]
            if config.data.get("balanced_sampling") else None)
    else:
        batches = (parallel.to_global(b, fold.mesh) for b in evaluate.process_batches(
            config, fold.source, fold.split["train"], batch_size=config.train.batch_size,
            epoch=epoch, train=True, labels=fold.records.labels[fold.split["train"]],
        ))
    writer = parallel.is_writer()
    # A redrawn bar on a terminal; in a log file a plain line every 30 s.
    bar = reporting.Progress(n_steps, f"epoch {epoch}/{config.train.epochs}", enabled=writer)
    sums: dict[str, jax.Array] = {}
    pending = None  # (global step, health flag) of the step before
    t_steady, timed_images = time.perf_counter(), 0
    for i, batch in enumerate(batches):
        compiling = first and i == 0
        with reporting.announce("compiling the train step", enabled=writer and compiling):
            state, m = fold.train_step(state, batch)
            if i == 0:
                # Throughput excludes the first step: on the first epoch it includes compilation.
                jax.block_until_ready(state.step)
                t_steady = time.perf_counter()
        if pending is not None:
            _check_healthy(pending[1], epoch, pending[0], config)
        pending = ((epoch - 1) * n_steps + i + 1, m.pop("healthy"))
        sums = m if not sums else jax.tree.map(jnp.add, sums, m)
        if i > 0:
            timed_images += config.train.batch_size
        postfix = ""
        if (i + 1) % config.train.log_every_steps == 0:
            postfix = f"loss {float(sums['loss_sum'] / sums['count']):.4f}"
        bar.update(postfix=postfix)
    bar.close()
    if pending is not None:
        _check_healthy(pending[1], epoch, pending[0], config)
    totals = parallel.to_host(sums)
    n = float(totals["count"])
    return state, {
        "train_loss": float(totals["loss_sum"]) / n,
        "train_bce": float(totals["bce_sum"]) / n,
        "train_spatial": float(totals["spatial_sum"]) / n,
        "valid_fit_fraction": float(totals["valid_fits"]) / n,
        "img_per_s": timed_images / max(time.perf_counter() - t_steady, 1e-9),
    }


def _validate(fold: Fold, params) -> dict[str, float]:
    idx = fold.split["val"]
    pred = evaluate.predict_split(fold.config, fold.eval_step, params, fold.source, idx, fold.mesh)
    labels = fold.records.labels[idx]
    val = metrics_lib.binary_metrics(labels, pred["probabilities"], 0.5, split="val")
    row = {
        "val_loss": evaluate.bce(pred["logits"], labels),
        "val_roc_auc": val["roc_auc"],
        "val_balanced_accuracy": val["balanced_accuracy"],
        "val_logit_sd": float(np.std(pred["logits"])),
    }
    if "weights" in pred:
        row["val_flat_heatmaps"] = metrics_lib.flat_map_fraction(pred["weights"])
    if len(idx) >= 2:
        row["val_dead_features"] = metrics_lib.dead_feature_fraction(pred["features"])
    return row


def _flat_map_hint(regulator_config: Any) -> str:
    """The setting that keeps the weights off the sigmoid's flat ends, for this config."""
    if regulator_config is None or regulator_config.normalise == "weights":
        return "weights saturated: regulator.normalise=logits avoids it"
    if regulator_config.loss == "paper":
        return "weights saturated"
    # these losses leave the logits' level or range free: only regulator.logit_decay holds it
    if regulator_config.get("logit_decay", 0.0) > 0:
        return (f"weights saturated: a larger regulator.logit_decay (now "
                f"{regulator_config.logit_decay:g}) holds their range")
    return (f"weights saturated: regulator.loss={regulator_config.loss} leaves their range "
            "free, regulator.logit_decay > 0 holds it (docs/recipe.md)")


def health_notes(row: dict[str, Any], regulator_config: Any = None) -> str:
    """What an epoch's validation numbers say went wrong, with the setting to change: a
    classifier whose output no longer depends on the image (its features collapsed, measured on
    configs/benchmark.py: every encoder feature dead), or heatmaps flat in most images
    (``regulator_config``: the run's ``config.regulator``, which picks the advice)."""
    notes = []
    if row.get("val_dead_features", 0.0) >= metrics_lib.DEAD_FRACTION:
        notes.append(f"dead encoder: {100 * row['val_dead_features']:.0f}% of the image "
                     "features are the same for every image (try a lower "
                     "train.learning_rate or another seed)")
    elif row.get("val_logit_sd", 1.0) < 1e-4:
        notes.append("the output is the same for every image (features collapsed: try a lower "
                     "train.learning_rate or another seed)")
    if row.get("val_flat_heatmaps", 0.0) > 0.5:
        notes.append(f"heatmaps flat in {100 * row['val_flat_heatmaps']:.0f}% of images "
                     f"({_flat_map_hint(regulator_config)})")
    return "".join(f" | warning: {n}" for n in notes)


def _log_epoch(fold: Fold, writer: MetricWriter, row: dict[str, Any], regs: np.ndarray) -> None:
    if parallel.is_writer():
        np.save(fold.run.regulators_at(row["epoch"]), regs)
    writer.write(row)
    print(
        f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} (bce {row['train_bce']:.4f}, "
        f"spatial {row['train_spatial']:.2f})"
        + (f" | val loss {row['val_loss']:.4f} auc {row['val_roc_auc']:.3f}"
           if "val_loss" in row else "")
        + f" | {row['img_per_s']:.1f} img/s"
        + (
            f" | regulator centre error {row['regulator_centre_error']:.2f} patches"
            if "regulator_centre_error" in row
            else ""
        )
        + (f" | {row['regulators_frozen']} of {row['regulators_total']} images frozen"
           if "regulators_frozen" in row else "")
        + health_notes(row, fold.config.regulator),
        flush=True,
    )


def _checkpoint(ckpt: Checkpoints, epoch: int, state, progress: LoopState,
                is_best: bool) -> None:
    """Commit ``latest`` then, if selected, ``best``; a kill between the two is repaired on
    resume (``_ensure_best``)."""
    meta = progress.to_meta()
    ckpt.save("latest", epoch, state, meta)
    if is_best:
        ckpt.save("best", epoch, state, meta)


def _truth(fold: Fold) -> np.ndarray | None:
    t = fold.records.truth_cervix
    return None if t is None else t[fold.split["train"]]


def _train_fold(config, run: RunDir, source, records, split, mesh) -> dict[str, Any]:
    """Train one model on ``split['train']``, select on ``val``, test the selected checkpoint."""
    fold = _set_up(config, run, source, records, split, mesh)
    n_steps = len(split["train"]) // config.train.batch_size
    ckpt = Checkpoints(run)
    writer = MetricWriter(run)
    try:
        state, progress = _resume(ckpt, fold)
        truth = _truth(fold) if model_lib.has_weights(config) else None  # no regulator else
        first_epoch = epoch = progress.epoch + 1
        while progress.epoch < config.train.epochs and not progress.stopped:
            epoch = progress.epoch + 1
            t0 = time.perf_counter()
            state, row = _train_epoch(fold, state, epoch, first=epoch == first_epoch)
            if len(fold.split["val"]):
                with reporting.announce("validating (compiles the eval step)",
                                        enabled=parallel.is_writer() and epoch == first_epoch):
                    row.update(_validate(fold, steps.eval_params(state)))
                is_best = progress.selection.update(epoch, row["val_roc_auc"], row["val_loss"])
            else:  # no validation set (data.val_fraction=0): fixed epochs, the last one is tested
                is_best = progress.selection.update(epoch, float(epoch), 0.0)
            progress.epoch = epoch
            progress.stopped = progress.selection.bad_epochs >= config.train.patience
            regs = np.asarray(parallel.to_host(state.regulators))
            row = {"epoch": epoch, "step": int(state.step), **row,
                   "lr": steps.lr_at(config, n_steps, int(state.step)),
                   "epoch_time_s": time.perf_counter() - t0}
            if steps.stop_thresholds(config) is not None:
                agree = np.asarray(parallel.to_host(state.regulator_agree))
                row["regulators_frozen"] = int(np.sum(agree >= config.regulator.stop_epochs))
                row["regulators_total"] = len(agree)
            if truth is not None:
                row["regulator_centre_error"] = metrics_lib.centre_error(regs[:, :5], truth)
            _log_epoch(fold, writer, row, regs)
            _checkpoint(ckpt, epoch, state, progress, is_best)
            if progress.stopped:
                print(f"early stopping: no better validation AUC for {config.train.patience} "
                      "epochs")
        digest = parallel.assert_replicas_agree({"params": state.params,
                                                 "ema_params": state.ema_params,
                                                 "regulators": state.regulators})
        print(f"process {jax.process_index()}/{jax.process_count()}: state sha256 {digest}",
              flush=True)
        best_epoch = progress.selection.best_epoch
        best_state, _ = ckpt.restore("best", best_epoch, state)
    except KeyboardInterrupt:
        raise Interrupted(f"epoch {epoch}") from None
    finally:
        writer.close()
        ckpt.close()
    with reporting.announce(f"evaluating the selected model (epoch {best_epoch}) on val and test",
                            enabled=parallel.is_writer()):
        results = _evaluate(fold, steps.eval_params(best_state))
    results["best_epoch"] = best_epoch
    results["epochs_run"] = progress.epoch
    if model_lib.has_weights(config):  # a whole-image baseline has no regulator to summarise
        results["regulator"] = _regulator_summary(
            fold, np.asarray(parallel.to_host(state.regulators))
        )
    results["runtime"] = parallel.runtime_info(mesh)
    if fold.records.label_note:  # what the numbers measure when label 1 is not histology
        results["label_note"] = fold.records.label_note
    if parallel.is_writer():
        write_json(run.results, results)
    return results


def _evaluate(fold: Fold, params) -> dict[str, Any]:
    """Predict val and test with the selected parameters, save them, compute the metrics."""
    preds: dict[str, Any] = {"val": None}
    for name in ("val", "test"):
        idx = fold.split[name]
        if not len(idx):
            continue
        pred = evaluate.predict_split(
            fold.config, fold.eval_step, params, fold.source, idx, fold.mesh
        )
        preds[name] = evaluate.with_records(pred, fold.records, idx)
        if parallel.is_writer():
            evaluate.save_predictions(fold.run, name, preds[name])
    results = evaluate.test_metrics(fold.config, preds["val"], preds["test"])
    tested = preds["test"]
    if len(tested["features"]) >= 2:
        results["dead_feature_fraction"] = metrics_lib.dead_feature_fraction(tested["features"])
        results["dead_encoder"] = metrics_lib.is_dead_encoder(tested["features"])
        if results["dead_encoder"]:
            print("warning: dead encoder: the selected model's image features are the same for "
                  "every test image (metrics.is_dead_encoder)", flush=True)
    if parallel.is_writer():
        _draw_heatmaps(fold.config, fold.run, fold.source, preds["test"], fold.split["test"])
    t = results["test"]
    print(
        f"test: ROC AUC {t['roc_auc']:.3f}, balanced accuracy {t['balanced_accuracy']:.3f}, "
        f"F1 {t['f1']:.3f}, recall {t['recall']:.3f} (threshold {results['threshold']:.3f} from "
        "validation)"
    )
    if fold.records.label_note:
        print(f"label 1 = {fold.records.label_note}")
    return results


def _draw_heatmaps(config, run: RunDir, source, test: dict[str, np.ndarray], idx) -> None:
    """Overlays of the first ``config.eval.num_heatmaps`` test images, with their fitted ellipse
    (none where the map is flat and no Gaussian can be fitted); none for a model without
    patch weights."""
    from jaxcerv.reporting import viz
    if "weights" not in test:
        return
    for k in range(min(config.eval.num_heatmaps, len(idx))):
        i = int(idx[k])
        image_id = str(test["ids"][k])
        fit = test["regulators"][k]
        viz.heatmap_overlay(
            np.asarray(source[i]["image"]),
            test["weights"][k],
            run.path("heatmaps", f"{image_id}.png"),
            regulator=fit if viz.regulator_is_drawable(fit) else None,
            patch_size=config.patch_size,
            title=f"{image_id}: label {test['labels'][k]}, p={test['probabilities'][k]:.2f}",
        )


def _regulator_summary(fold: Fold, final_regs: np.ndarray) -> dict[str, Any]:
    config = fold.config
    reg: dict[str, Any] = {"mode": config.regulator.mode,
                           "final_mean": final_regs.mean(axis=0).tolist()}
    truth = _truth(fold)
    if truth is not None:
        grid = (config.grid_size, config.grid_size)
        g0 = np.tile(np.asarray(regulator.initial_params(grid, config.regulator.g0_fraction)),
                     (len(truth), 1))
        reg["centre_error_patches"] = metrics_lib.centre_error(final_regs[:, :5], truth)
        reg["initial_centre_error_patches"] = metrics_lib.centre_error(g0, truth)
        print(
            f"regulator centre error: {reg['centre_error_patches']:.2f} patches "
            f"(G0: {reg['initial_centre_error_patches']:.2f})"
        )
    return reg


def fold_config(config: ml_collections.ConfigDict, k: int) -> ml_collections.ConfigDict:
    """``config`` with ``model.init_from`` for fold ``k`` (``model.init_from_for_fold``), so each
    fold starts from the encoder pretrained without its test sessions."""
    template = config.model.init_from
    path = model_lib.init_from_for_fold(template, k)
    if path == template:
        return config
    if not os.path.isfile(path):
        raise RunError(f"config.model.init_from={template}: {path} (fold {k}) does not exist: "
                       "pretrain with --config.pretrain.per_fold=True and the same data settings")
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.init_from = path
    return config


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Load (building on first use) the data, split it by session, train and test every fold.

    Process 0 holds ``W/lock`` for the whole run, so a second run on the same folder refuses.
    """
    run = RunDir(workdir)
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.train.batch_size, mesh)
    parallel.check_batch_size(config.eval.batch_size, mesh, "config.eval.batch_size")
    fresh = not os.path.isdir(workdir) or not os.listdir(workdir)
    if parallel.is_writer():
        acquire_lock(run)
    failed = True
    try:
        results = _train_and_evaluate(config, run, mesh)
        failed = False
        return results
    except KeyboardInterrupt:
        raise Interrupted("setup or evaluation (no epoch running)") from None
    except Exception as e:  # a peer process died mid-collective: one line, no hang
        if (lost := parallel.lost_peer(e)) is not None:
            parallel.exit_without_shutdown()
            raise lost from None
        raise
    finally:
        if parallel.is_writer():
            release_lock(run)
            if failed and fresh:
                discard_unstarted(run)


def discard_unstarted(run: RunDir) -> None:
    """A fresh workdir whose run failed before its first checkpoint (bad data, a batch larger
    than the split) keeps nothing of it: its config.json and empty folders go, so the folder
    is as it was. A dataset built into it stays; an empty build lock goes."""
    for folder, subfolders, _ in os.walk(run.root):
        if os.path.basename(folder) == "checkpoints" and subfolders:  # W/ or W/fold_K/
            return
    with contextlib.suppress(FileNotFoundError):
        os.remove(run.config)
    for folder, _, files in sorted(os.walk(run.root), key=lambda t: -len(t[0])):
        for name in files:  # the dataset builders' empty flock files (builders.prepare)
            path = os.path.join(folder, name)
            if name.startswith(".") and name.endswith(".lock") and not os.path.getsize(path):
                os.remove(path)
        with contextlib.suppress(OSError):  # not empty: kept
            os.rmdir(folder)


def _one_config_per_folder(config: ml_collections.ConfigDict, run: RunDir) -> None:
    """A folder holds one run of one config. A rerun may extend it (``RERUN_MAY_CHANGE``: said in
    one line); any other change is refused, naming the keys, unless ``train.restart`` asks to
    delete the old run's checkpoints and results and start over. Every process checks (so all
    refuse together); process 0 deletes, and the others wait for it."""
    restart = bool(config.train.get("restart", False))
    if not restart and run.holds_a_run() and os.path.isfile(run.config):
        allowed, refused = rundir.config_changes(
            configcheck.with_defaults(rundir.read_json(run.config)), config.to_dict())
        if refused:
            shown = ", ".join(refused[:4]) + (f" and {len(refused) - 4} more" if
                                               len(refused) > 4 else "")
            raise RunError(
                f"{run.root} holds a run of another config ({shown}): use a new --workdir, or "
                "add --config.train.restart=True to delete that run's checkpoints and results "
                "and start over"
            )
        allowed = [c for c in allowed if not c.startswith("train.restart:")]  # not the run's
        if allowed and parallel.is_writer():
            print(f"config change in {run.root}, allowed (it extends the run): "
                  + ", ".join(allowed), flush=True)
    if restart and parallel.is_writer():
        keep = os.path.abspath(config.data.splits_file) if config.data.splits_file else None
        gone = [p for p in run.outputs() if os.path.abspath(p) != keep]
        for path in gone:
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        if gone:
            print(f"train.restart=True: deleted the earlier run in {run.root} "
                  f"({', '.join(os.path.basename(p) for p in gone)}); starting over", flush=True)
    if restart:
        parallel.barrier("jaxcerv_restart")


def _train_and_evaluate(config: ml_collections.ConfigDict, run: RunDir, mesh) -> dict[str, Any]:
    _one_config_per_folder(config, run)
    if parallel.is_writer():
        run.makedirs()
        write_json(run.config, config.to_dict())
    source, records = pipeline.load(config, run.root)
    folds = splits.make_splits(
        records, config.data, run.root, seed=config.seed, write=parallel.is_writer()
    )
    if len(folds) == 1:
        return _train_fold(fold_config(config, 0), run, source, records, folds[0], mesh)
    per_fold = []
    for k, split in enumerate(folds):
        print(f"=== fold {k + 1}/{len(folds)} ===")
        try:
            per_fold.append(
                _train_fold(fold_config(config, k), run.fold(k), source, records, split, mesh))
        except Interrupted as e:
            raise Interrupted(f"{e.where} of fold {k}") from None
    results = {
        "folds": per_fold,
        "test": metrics_lib.summarize_folds([r["test"] for r in per_fold]),
        "runtime": parallel.runtime_info(mesh),
    }
    if records.label_note:
        results["label_note"] = records.label_note
    if parallel.is_writer():
        write_json(run.results, results)
    t = results["test"]
    print(
        f"{len(folds)}-fold test ROC AUC {t['mean']['roc_auc']:.3f} +- {t['sd']['roc_auc']:.3f}, "
        f"balanced accuracy {t['mean']['balanced_accuracy']:.3f} "
        f"+- {t['sd']['balanced_accuracy']:.3f}"
    )
    return results

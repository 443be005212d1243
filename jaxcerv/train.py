"""Training and evaluation: one explicit train state, a jitted train step, the epoch loop.

``train_and_evaluate(config, workdir)`` is the whole program; ``main.py`` only parses flags.
The per-image spatial regulators live in the train state as one (N_train, 5) array: each train
step uses the batch's rows for the spatial loss and writes back the valid fits (Alg. 1), so every
epoch re-estimates every training image's regulator from its own patch weights.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from tqdm import tqdm

from jaxcerv import conv, parallel, regulator
from jaxcerv import metrics as metrics_lib
from jaxcerv import model as model_lib
from jaxcerv.checkpointing import Checkpoints
from jaxcerv.data import pipeline, splits

Batch = dict[str, jax.Array]
REGULATOR_MODES = ("iterative", "fixed", "none")


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree (checkpointed whole)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # split every step for stochastic layers (classifier dropout)
    regulators: jax.Array  # (N_train, 5) per-image Gaussian, patch units


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    return optax.adam(config.train.learning_rate)


def create_train_state(
    config: ml_collections.ConfigDict,
    model: model_lib.PatchWiseModel,
    tx: optax.GradientTransformation,
    num_train: int,
    rng: jax.Array,
) -> TrainState:
    """Fresh parameters and every training image's regulator at G0."""
    init_rng, state_rng = jax.random.split(rng)
    side = config.grid_size * config.patch_size
    params = model.init(init_rng, jnp.zeros((1, side, side, 3), jnp.uint8))["params"]
    g0 = regulator.initial_params((config.grid_size, config.grid_size))
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=state_rng,
        regulators=jnp.tile(g0, (num_train, 1)),
    )


def classification_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Eq. 2 as intended: the standard binary cross-entropy (the printed form has a typo)."""
    return optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32))


def update_regulators(
    regulators: jax.Array, index: jax.Array, fits: jax.Array, write: jax.Array
) -> jax.Array:
    """Alg. 1's "if valid then update": scatter ``fits`` into rows ``index`` where ``write``.

    Rows that must not be written go to an out-of-range index and are dropped, so a padding row
    can never race a real row for the same slot.
    """
    target = jnp.where(write, index, regulators.shape[0])
    return regulators.at[target].set(fits, mode="drop")


FIT_ON = ("weights", "normalised", "above_median")


def fit_weights(weights: jax.Array, fit_on: str) -> jax.Array:
    """The per-patch masses the regulator is fitted to (Alg. 1's "estimation from patch weights").

    "weights": the raw sigmoid outputs, as the paper states; their background floor drags every
    fit towards the grid centre. "normalised": min-max normalised, what the spatial loss sees.
    "above_median": the normalised weights less their per-image median, clipped at 0, so only the
    patches weighted above the image's typical patch locate the regulator.
    """
    if fit_on == "weights":
        return weights
    normalised = regulator.min_max(weights)
    if fit_on == "normalised":
        return normalised
    if fit_on == "above_median":
        median = jnp.median(normalised.reshape(*normalised.shape[:-2], -1), axis=-1)
        return jnp.maximum(normalised - median[..., None, None], 0.0)
    raise ValueError(f"config.regulator.fit_on={fit_on!r}: use one of {FIT_ON}")


def make_train_step(
    config: ml_collections.ConfigDict,
    model: model_lib.PatchWiseModel,
    tx: optax.GradientTransformation,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The un-jitted train step for this config (jit it with donation: see ``jit_train_step``)."""
    mode, lam = config.regulator.mode, config.regulator.lam
    if mode not in REGULATOR_MODES:
        raise ValueError(f"config.regulator.mode={mode!r}: use one of {REGULATOR_MODES}")
    grid = (config.grid_size, config.grid_size)
    g0 = regulator.initial_params(grid)
    fit_on = config.regulator.fit_on

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        rng, dropout_rng = jax.random.split(state.rng)
        mask = batch["mask"].astype(jnp.float32)
        count = jnp.maximum(jnp.sum(mask), 1.0)
        if mode == "iterative":
            regs = state.regulators[batch["index"]]
        else:
            regs = jnp.broadcast_to(g0, (batch["index"].shape[0], 5))
        density = regulator.gaussian_density(regs, grid)

        def loss_fn(params: Any) -> tuple[jax.Array, tuple[Any, ...]]:
            out = model.apply(
                {"params": params}, batch["image"], train=True, rngs={"dropout": dropout_rng}
            )
            bce = classification_loss(out.logits, batch["label"])
            spatial = regulator.spatial_loss(out.weights, density)
            total = bce + lam * spatial if mode != "none" else bce
            return jnp.sum(total * mask) / count, (bce, spatial, out.weights)

        (loss, (bce, spatial, weights)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        fits = regulator.fit_gaussian(fit_weights(jax.lax.stop_gradient(weights), fit_on))
        write = regulator.is_valid(fits, grid) & batch["mask"]
        regulators = state.regulators
        if mode == "iterative":
            regulators = update_regulators(regulators, batch["index"], fits, write)
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, rng=rng, regulators=regulators
        )
        metrics = {
            "loss_sum": loss * count,
            "bce_sum": jnp.sum(bce * mask),
            "spatial_sum": jnp.sum(spatial * mask),
            "valid_fits": jnp.sum(write.astype(jnp.float32)),
            "count": jnp.sum(mask),
        }
        return new_state, metrics

    return train_step


def make_eval_step(
    model: model_lib.PatchWiseModel, fit_on: str
) -> Callable[[Any, Batch], dict[str, jax.Array]]:
    """Forward pass for evaluation: probabilities, heatmaps, features and each image's own fit
    (made as in training, see ``fit_weights``)."""

    def eval_step(params: Any, batch: Batch) -> dict[str, jax.Array]:
        out = model.apply({"params": params}, batch["image"], train=False)
        return {
            "logits": out.logits,
            "probabilities": jax.nn.sigmoid(out.logits),
            "weights": out.weights,
            "features": out.features,
            "regulators": regulator.fit_gaussian(fit_weights(out.weights, fit_on)),
        }

    return eval_step


def jit_steps(config, model, tx, mesh):
    """Jit both steps over the mesh: batch split on ``data``, state replicated and donated."""
    rep, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    options = conv.compiler_options(config.model.conv_impl)
    train_step = jax.jit(
        make_train_step(config, model, tx),
        in_shardings=(rep, data),
        out_shardings=(rep, rep),
        donate_argnums=0,
        compiler_options=options,
    )
    eval_step = jax.jit(
        make_eval_step(model, config.regulator.fit_on),
        in_shardings=(rep, data),
        out_shardings=data,
        compiler_options=options,
    )
    return train_step, eval_step


# ---------------------------------------------------------------------------------------------
# Host loop


def _write_json(path: str, obj: Any) -> None:
    if parallel.is_writer():
        with open(path, "w") as f:
            json.dump(obj, f, indent=2, default=_json_default)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _truncate_metrics(path: str, last_epoch: int) -> None:
    """On resume, forget epochs logged after the checkpoint we resume from."""
    if not (parallel.is_writer() and os.path.exists(path)):
        return
    with open(path) as f:
        lines = [ln for ln in f if ln.strip() and json.loads(ln)["epoch"] <= last_epoch]
    with open(path, "w") as f:
        f.writelines(lines)


def _process_batches(config, source, indices, *, batch_size, epoch, train) -> Iterator[dict]:
    """This process's share of each global batch."""
    return pipeline.batches(
        source,
        indices,
        batch_size=batch_size,
        seed=config.seed,
        epoch=epoch,
        shuffle=train,
        augment=train and config.data.augment,
        drop_remainder=train,
        num_workers=config.data.num_workers,
        prefetch=config.data.prefetch,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
    )


def predict_split(config, eval_step, params, source, indices, mesh) -> dict[str, np.ndarray]:
    """Run ``eval_step`` over a split; the padded last batch is masked out, never dropped."""
    parallel.check_batch_size(config.eval.batch_size, mesh, "config.eval.batch_size")
    chunks: dict[str, list[np.ndarray]] = {}
    for host_batch in _process_batches(
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


def _val_loss(pred: dict[str, np.ndarray], labels: np.ndarray) -> float:
    return float(np.mean(classification_loss(jnp.asarray(pred["logits"]), jnp.asarray(labels))))


def _improves(val_auc: float, val_loss: float, meta: dict) -> bool:
    """Model selection and early stopping: a higher validation ROC AUC, ties broken by a lower
    validation BCE. The BCE alone stalls for epochs while the patch weights are still spreading
    out, even as the ranking (AUC) improves, and stopped runs before they learned."""
    return (val_auc, -val_loss) > (meta["best_val_auc"], -meta["best_val_loss"])


def _train_fold(
    config: ml_collections.ConfigDict,
    workdir: str,
    source: Any,
    records: pipeline.Records,
    split: dict[str, np.ndarray],
    mesh: Any,
) -> dict[str, Any]:
    """Train one model on ``split['train']``, early-stop on ``val``, test the best checkpoint."""
    os.makedirs(os.path.join(workdir, "regulators"), exist_ok=True)
    train_idx, val_idx = split["train"], split["val"]
    parallel.check_batch_size(config.train.batch_size, mesh)
    if len(train_idx) < config.train.batch_size:
        raise ValueError(
            f"the train split has {len(train_idx)} images, fewer than one batch of "
            f"config.train.batch_size={config.train.batch_size}: lower the batch size"
        )
    model = model_lib.from_config(config)
    tx = make_optimizer(config)
    train_step, eval_step = jit_steps(config, model, tx, mesh)
    state = parallel.replicated_init(
        functools.partial(create_train_state, config, model, tx, len(train_idx)),
        mesh,
        jax.random.PRNGKey(config.seed),
    )
    grid = (config.grid_size, config.grid_size)
    truth = records.truth_cervix[train_idx] if records.truth_cervix is not None else None
    _write_json(
        os.path.join(workdir, "regulators", "train_ids.json"), records.ids[train_idx].tolist()
    )

    ckpt = Checkpoints(workdir)
    meta = {
        "epoch": 0,
        "best_val_auc": -1.0,
        "best_val_loss": float("inf"),
        "best_epoch": 0,
        "bad_epochs": 0,
        "stopped": False,
    }
    restored = ckpt.restore_latest(state)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if restored is not None:
        state, meta = restored
        logging.info("resuming from the checkpoint of epoch %d in %s", meta["epoch"], workdir)
        print(f"Resuming from epoch {meta['epoch']} (checkpoint in {workdir}/checkpoints)")
        _truncate_metrics(metrics_path, meta["epoch"])
    elif parallel.is_writer() and os.path.exists(metrics_path):
        os.remove(metrics_path)

    steps_per_epoch = len(train_idx) // config.train.batch_size
    epoch = meta["epoch"]
    while epoch < config.train.epochs and not meta["stopped"]:
        epoch += 1
        t0 = time.perf_counter()
        sums: dict[str, jax.Array] = {}
        bar = tqdm(
            _process_batches(
                config,
                source,
                train_idx,
                batch_size=config.train.batch_size,
                epoch=epoch,
                train=True,
            ),
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{config.train.epochs}",
            disable=not parallel.is_writer(),
            leave=False,
            # In a log file (no terminal) a line every 30 s instead of a redraw every second.
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
        )
        timed_images = 0.0
        for i, host_batch in enumerate(bar):
            state, m = train_step(state, parallel.to_global(host_batch, mesh))
            sums = m if not sums else jax.tree.map(jnp.add, sums, m)
            if i == 0:
                # Throughput excludes the first step: on the first epoch it includes compilation.
                jax.block_until_ready(state.step)
                t_steady = time.perf_counter()
            else:
                timed_images += config.train.batch_size
            if (i + 1) % config.train.log_every_steps == 0:
                bar.set_postfix(loss=f"{float(sums['loss_sum'] / sums['count']):.4f}")
        sums = parallel.to_host(sums)
        train_time = time.perf_counter() - t_steady
        n = float(sums["count"])

        val = predict_split(config, eval_step, state.params, source, val_idx, mesh)
        val_labels = records.labels[val_idx]
        val_loss = _val_loss(val, val_labels)
        val_metrics = metrics_lib.binary_metrics(val_labels, val["probabilities"], 0.5, split="val")
        is_best = _improves(val_metrics["roc_auc"], val_loss, meta)
        if is_best:
            meta.update(
                best_val_auc=val_metrics["roc_auc"],
                best_val_loss=val_loss,
                best_epoch=epoch,
                bad_epochs=0,
            )
        else:
            meta["bad_epochs"] += 1
        meta["epoch"] = epoch
        meta["stopped"] = meta["bad_epochs"] >= config.train.patience
        regs = np.asarray(parallel.to_host(state.regulators))
        row = {
            "epoch": epoch,
            "step": int(state.step),
            "train_loss": float(sums["loss_sum"]) / n,
            "train_bce": float(sums["bce_sum"]) / n,
            "train_spatial": float(sums["spatial_sum"]) / n,
            "valid_fit_fraction": float(sums["valid_fits"]) / n,
            "val_loss": val_loss,
            "val_roc_auc": val_metrics["roc_auc"],
            "val_balanced_accuracy": val_metrics["balanced_accuracy"],
            "lr": config.train.learning_rate,
            "epoch_time_s": time.perf_counter() - t0,
            "img_per_s": timed_images / max(train_time, 1e-9),
        }
        if truth is not None:
            row["regulator_centre_error"] = metrics_lib.centre_error(regs, truth)
        if parallel.is_writer():
            np.save(os.path.join(workdir, "regulators", f"epoch_{epoch:04d}.npy"), regs)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        ckpt.save(epoch, state, meta, is_best)
        print(
            f"epoch {epoch}: train loss {row['train_loss']:.4f} (bce {row['train_bce']:.4f}, "
            f"spatial {row['train_spatial']:.2f}) | val loss {val_loss:.4f} "
            f"auc {row['val_roc_auc']:.3f} | {row['img_per_s']:.1f} img/s"
            + (
                f" | regulator centre error {row['regulator_centre_error']:.2f} patches"
                if truth is not None
                else ""
            ),
            flush=True,
        )
        if meta["stopped"]:
            print(f"early stopping: no better validation AUC for {config.train.patience} epochs")
    ckpt.wait()
    # Every process checks that its replica matches the others' and prints the digest.
    final = {"params": state.params, "regulators": state.regulators}
    digest = parallel.assert_replicas_agree(final)
    print(f"process {jax.process_index()}/{jax.process_count()}: state sha256 {digest}", flush=True)

    final_regs = np.asarray(parallel.to_host(state.regulators))
    best = ckpt.restore_best(state)
    ckpt.close()
    best_state, best_meta = best if best is not None else (state, meta)
    results = evaluate(config, workdir, eval_step, best_state.params, source, records, split, mesh)
    results["best_epoch"] = best_meta["best_epoch"]
    results["epochs_run"] = meta["epoch"]
    reg = {
        "mode": config.regulator.mode,
        "final_mean": final_regs.mean(axis=0).tolist(),
    }
    if truth is not None:
        g0 = np.tile(np.asarray(regulator.initial_params(grid)), (len(train_idx), 1))
        reg["centre_error_patches"] = metrics_lib.centre_error(final_regs, truth)
        reg["initial_centre_error_patches"] = metrics_lib.centre_error(g0, truth)
        print(
            f"regulator centre error: {reg['centre_error_patches']:.2f} patches "
            f"(G0: {reg['initial_centre_error_patches']:.2f})"
        )
    results["regulator"] = reg
    results["runtime"] = parallel.runtime_info(mesh)
    _write_json(os.path.join(workdir, "results.json"), results)
    return results


def evaluate(config, workdir, eval_step, params, source, records, split, mesh) -> dict[str, Any]:
    """Threshold on validation, metrics on test, predictions and heatmaps to the workdir."""
    from jaxcerv import viz

    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    preds = {}
    for name in ("val", "test"):
        idx = split[name]
        pred = predict_split(config, eval_step, params, source, idx, mesh)
        pred.pop("logits")
        preds[name] = pred
        if parallel.is_writer():
            np.savez_compressed(
                os.path.join(workdir, "eval", f"{name}.npz"),
                ids=records.ids[idx],
                labels=records.labels[idx],
                grades=records.grades[idx],
                sessions=records.sessions[idx],
                days_to_diagnosis=records.days_to_diagnosis[idx],
                **pred,
            )
    val_labels, test_labels = records.labels[split["val"]], records.labels[split["test"]]
    threshold = metrics_lib.choose_threshold(
        val_labels, preds["val"]["probabilities"], config.eval.threshold_criterion
    )
    test_probs = preds["test"]["probabilities"]
    results: dict[str, Any] = {
        "threshold": threshold,
        "val": metrics_lib.binary_metrics(
            val_labels, preds["val"]["probabilities"], threshold, split="val"
        ),
        "test": metrics_lib.binary_metrics(test_labels, test_probs, threshold, split="test"),
        "test_ci95": metrics_lib.bootstrap_ci(
            test_labels,
            test_probs,
            threshold,
            records.sessions[split["test"]],
            n_boot=config.eval.bootstrap,
            seed=config.seed,
        ),
    }
    test_idx = split["test"]
    if records.truth_cervix is not None:
        w = preds["test"]["weights"]
        results["explanation"] = {
            "pointing_game": metrics_lib.pointing_game(w, records.truth_lesion[test_idx]),
            "heatmap_mass_in_cervix": metrics_lib.mass_in_ellipse(
                w, records.truth_cervix[test_idx]
            ),
            "fitted_centre_error_patches": metrics_lib.centre_error(
                preds["test"]["regulators"], records.truth_cervix[test_idx]
            ),
        }
    if parallel.is_writer():
        out = os.path.join(workdir, "heatmaps")
        os.makedirs(out, exist_ok=True)
        for k in range(min(config.eval.num_heatmaps, len(test_idx))):
            i = int(test_idx[k])
            viz.heatmap_overlay(
                np.asarray(source[i]["image"]),
                preds["test"]["weights"][k],
                os.path.join(out, f"{records.ids[i]}.png"),
                regulator=preds["test"]["regulators"][k],
                patch_size=config.patch_size,
                title=f"{records.ids[i]}: label {records.labels[i]}, p={test_probs[k]:.2f}",
            )
    t = results["test"]
    print(
        f"test: ROC AUC {t['roc_auc']:.3f}, balanced accuracy {t['balanced_accuracy']:.3f}, "
        f"F1 {t['f1']:.3f}, recall {t['recall']:.3f} (threshold {threshold:.3f} from validation)"
    )
    return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Load (building on first use) the data, split it by session, train and test every fold."""
    os.makedirs(workdir, exist_ok=True)
    mesh = parallel.make_mesh()
    _write_json(os.path.join(workdir, "config.json"), config.to_dict())
    source, records = pipeline.load(config, workdir)
    folds = splits.make_splits(
        records, config.data, workdir, seed=config.seed, write=parallel.is_writer()
    )
    if len(folds) == 1:
        results = _train_fold(config, workdir, source, records, folds[0], mesh)
    else:
        per_fold = []
        for k, split in enumerate(folds):
            print(f"=== fold {k + 1}/{len(folds)} ===")
            fold_dir = os.path.join(workdir, f"fold_{k}")
            per_fold.append(_train_fold(config, fold_dir, source, records, split, mesh))
        results = {
            "folds": per_fold,
            "test": metrics_lib.summarize_folds([r["test"] for r in per_fold]),
            "runtime": parallel.runtime_info(mesh),
        }
        _write_json(os.path.join(workdir, "results.json"), results)
        t = results["test"]
        print(
            f"{len(folds)}-fold test ROC AUC {t['mean']['roc_auc']:.3f} "
            f"+- {t['sd']['roc_auc']:.3f}, "
            f"balanced accuracy {t['mean']['balanced_accuracy']:.3f} "
            f"+- {t['sd']['balanced_accuracy']:.3f}"
        )
    if parallel.is_writer():
        from jaxcerv import report  # lazy: report imports predict, which imports this module

        print("report:", report.write_report(workdir, data=(source, records)))
    return results

"""The train state, the optimizer and the jitted steps: pure functions, no I/O.

The per-image spatial regulators live in the train state as one (N_train, 5) array: each train
step uses the batch's rows for the spatial loss and writes back the valid fits (Alg. 1,
``regulator.refit``), so every epoch re-estimates every training image's regulator from its own
patch weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxcerv.model import conv, losses, regulator
from jaxcerv.model import networks as model_lib
from jaxcerv.runtime import parallel

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree (checkpointed whole)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # split every step for stochastic layers (classifier dropout)
    regulators: jax.Array  # (N_train, 5) per-image Gaussian, patch units (wider: other kernels)
    # (N_train,) successive agreeing fits per image (regulator.stop_kl; frozen at stop_epochs)
    regulator_agree: jax.Array
    # The exponential moving average of params that is validated, tested and served
    # (train.ema_epochs > 0); None when off (checkpointing then writes the layout of before).
    ema_params: Any = None


# train.schedule: "constant" (the paper) | "warmup_cosine" (linear warm-up, then cosine decay).
SCHEDULES = ("constant", "warmup_cosine")


def learning_rate(config: ml_collections.ConfigDict, steps_per_epoch: int = 1):
    """The learning rate: a float (``train.schedule=constant``) or an optax schedule of the step:
    a linear warm-up over ``train.warmup_epochs`` from 0, then a cosine decay to
    ``train.final_lr_fraction`` of the peak at ``train.epochs``."""
    t = config.train
    name = t.get("schedule", "constant")
    if name == "constant":
        return t.learning_rate
    if name != "warmup_cosine":
        raise ValueError(f"config.train.schedule={name!r}: use one of {SCHEDULES}")
    total = max(int(t.epochs * steps_per_epoch), 2)
    warmup = min(int(round(t.get("warmup_epochs", 0.0) * steps_per_epoch)), total - 1)
    return optax.warmup_cosine_decay_schedule(
        0.0, t.learning_rate, warmup, total, t.learning_rate * t.get("final_lr_fraction", 0.0))


def lr_at(config: ml_collections.ConfigDict, steps_per_epoch: int, step: int) -> float:
    """The learning rate at ``step`` (for the epoch log)."""
    lr = learning_rate(config, steps_per_epoch)
    return float(lr(step)) if callable(lr) else float(lr)


def averages(config: ml_collections.ConfigDict) -> bool:
    """Whether the state carries a moving average of the parameters (``train.ema_epochs`` > 0)."""
    return config.train.get("ema_epochs", 0.0) > 0


def ema_decay(config: ml_collections.ConfigDict, steps_per_epoch: int = 1) -> float:
    """The per-step decay of the parameter average: 1 - 1 / (``train.ema_epochs`` x steps per
    epoch), so its horizon is that many epochs whatever the data set's size; 0 when off."""
    if not averages(config):
        return 0.0
    return 1.0 - 1.0 / max(config.train.ema_epochs * steps_per_epoch, 1.0)


def ema_update(ema: Any, params: Any, decay: float) -> Any:
    """One step of the exponential moving average: decay * ema + (1 - decay) * params."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def eval_params(state: TrainState) -> Any:
    """The parameters that are validated, tested and served: the average when there is one."""
    return state.params if state.ema_params is None else state.ema_params


def served_params_key(config: ml_collections.ConfigDict) -> str:
    """The train-state field ``eval_params`` reads for this config (what predict restores)."""
    return "ema_params" if averages(config) else "params"


def make_optimizer(
    config: ml_collections.ConfigDict, steps_per_epoch: int = 1
) -> optax.GradientTransformation:
    """Adam (``train.adam_eps``) at ``learning_rate``; ``train.grad_clip`` > 0 clips the global
    gradient norm first; with ``train.freeze_encoder_steps`` > 0 (a pretrained encoder loaded
    through ``model.init_from``) the encoder is held still for that many steps."""
    tx = optax.adam(learning_rate(config, steps_per_epoch), eps=config.train.get("adam_eps", 1e-8))
    clip = config.train.get("grad_clip", 0.0)
    if clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    frozen = config.train.get("freeze_encoder_steps", 0)
    return freeze_encoder(tx, frozen) if frozen else tx


def freeze_encoder(
    tx: optax.GradientTransformation, frozen_steps: int
) -> optax.GradientTransformation:
    """``tx`` with the ``encoder`` subtree's updates zeroed for the first ``frozen_steps`` steps:
    the new weight MLP and classifier first learn on the pretrained features, so their early,
    large gradients do not wash the pretrained encoder out."""

    def init(params: Any) -> tuple[Any, jax.Array]:
        return tx.init(params), jnp.zeros((), jnp.int32)

    def update(updates: Any, state: tuple[Any, jax.Array], params: Any = None):
        inner, count = state
        updates, inner = tx.update(updates, inner, params)
        keep = (count >= frozen_steps).astype(jnp.float32)
        updates = {**updates,
                   "encoder": jax.tree.map(lambda u: u * keep.astype(u.dtype),
                                           updates["encoder"])}
        return updates, (inner, count + 1)

    return optax.GradientTransformation(init, update)


def create_train_state(
    config: ml_collections.ConfigDict,
    model: Any,
    tx: optax.GradientTransformation,
    num_train: int,
    rng: jax.Array,
) -> TrainState:
    """Fresh parameters (``model.init_from`` loaded over them) and every training image's
    regulator at G0."""
    init_rng, state_rng = jax.random.split(rng)
    side = config.grid_size * config.patch_size
    params = model.init(init_rng, jnp.zeros((1, side, side, 3), jnp.uint8))["params"]
    if config.model.init_from:
        params = model_lib.load_init(params, config.model.init_from)
    kernel = config.regulator.get("kernel", "gaussian")
    grid = (config.grid_size, config.grid_size)
    g0 = regulator.initial_state(grid, config.regulator.g0_fraction, kernel)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=state_rng,
        regulators=jnp.tile(g0, (num_train, 1)),
        regulator_agree=jnp.zeros((num_train,), jnp.int32),
        ema_params=jax.tree.map(jnp.copy, params) if averages(config) else None,
    )


def stop_thresholds(config: ml_collections.ConfigDict) -> dict | None:
    """``regulator.stop_rule``'s thresholds from the config; None when the criterion is off
    (``regulator.stop_kl`` = 0, the paper: every image is refitted every epoch)."""
    r = config.regulator
    if r.get("stop_kl", 0.0) <= 0:
        return None
    return {"stop_kl": r.stop_kl, "stop_epochs": r.stop_epochs, "thaw_kl": r.thaw_kl}


def _all_finite(*trees: Any) -> jax.Array:
    leaves = [leaf for t in trees for leaf in jax.tree.leaves(t)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def make_train_step(
    config: ml_collections.ConfigDict,
    model: Any,
    tx: optax.GradientTransformation,
    class_weights: Any = (1.0, 1.0),
    steps_per_epoch: int = 1,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The un-jitted train step for this config (jit it with donation: see ``jit_steps``).

    ``class_weights`` (w_0, w_1) weight each image's BCE in the loss (``losses.class_weights``);
    the logged ``bce_sum`` stays unweighted, so it is comparable across settings.

    ``metrics["healthy"]`` is false when the loss, a gradient, a new parameter or a regulator is
    not finite, or the batch's mean BCE exceeds ``config.train.max_bce``: the loop stops on it
    (divergence guard) before anything is saved. A model without patch weights (a whole-image
    baseline) has no spatial loss and no refit: its regulators stay at G0, its spatial loss is 0.
    lambda follows ``losses.lambda_at`` (``regulator.lam_hold_epochs``, ``lam_ramp_epochs``).
    """
    mode, lam, fit_on = config.regulator.mode, config.regulator.lam, config.regulator.fit_on
    max_bce = config.train.max_bce
    grid = (config.grid_size, config.grid_size)
    cw = tuple(float(w) for w in class_weights)
    on_logits = config.regulator.normalise == "logits"
    spatial_loss = regulator.spatial_loss_fn(config.regulator.loss, on_logits)
    kernel = config.regulator.get("kernel", "gaussian")
    stop = stop_thresholds(config)
    hold = config.regulator.get("lam_hold_epochs", 0) * steps_per_epoch
    ramp = config.regulator.get("lam_ramp_epochs", 0) * steps_per_epoch
    decay = config.regulator.get("logit_decay", 0.0)
    average = ema_decay(config, steps_per_epoch)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        rng, dropout_rng = jax.random.split(state.rng)
        mask = batch["mask"].astype(jnp.float32)
        count = jnp.maximum(jnp.sum(mask), 1.0)
        density = regulator.kernel_density(
            regulator.batch_regulators(state.regulators, batch["index"], mode, grid,
                                       config.regulator.g0_fraction, kernel), grid, kernel
        )

        def loss_fn(params: Any) -> tuple[jax.Array, tuple[Any, ...]]:
            out = model.apply(
                {"params": params}, batch["image"], train=True, rngs={"dropout": dropout_rng}
            )
            bce = losses.classification_loss(out.logits, batch["label"])
            if out.weights is None:
                spatial = jnp.zeros_like(bce)
            else:
                spatial = spatial_loss(out.weight_logits if on_logits else out.weights, density)
                if decay > 0:
                    spatial += decay * regulator.logit_decay_loss(out.weight_logits)
            total = losses.combined_loss(
                losses.weighted(bce, batch["label"], cw), spatial,
                losses.lambda_at(state.step, lam, hold, ramp), mode
            )
            return jnp.sum(total * mask) / count, (bce, spatial, out.weights)

        (loss, (bce, spatial, weights)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if weights is None:
            regulators, valid = state.regulators, jnp.zeros_like(batch["mask"], bool)
            agree = state.regulator_agree
        else:
            regulators, valid, agree = regulator.refit(
                state.regulators, batch["index"], weights, batch["mask"], fit_on=fit_on,
                mode=mode, kernel=kernel, agree=state.regulator_agree, stop=stop,
            )
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, rng=rng,
            regulators=regulators, regulator_agree=agree,
            ema_params=None if state.ema_params is None
            else ema_update(state.ema_params, params, average),
        )
        metrics = {
            "loss_sum": loss * count,
            "bce_sum": jnp.sum(bce * mask),
            "spatial_sum": jnp.sum(spatial * mask),
            "valid_fits": jnp.sum(valid.astype(jnp.float32)),
            "count": jnp.sum(mask),
            "healthy": _all_finite(loss, grads, params, regulators)
            & (jnp.sum(bce * mask) / count <= max_bce),
        }
        return new_state, metrics

    return train_step


def make_eval_step(model: Any, fit_on: str) -> Callable[[Any, Batch], dict[str, jax.Array]]:
    """Forward pass for evaluation: probabilities, heatmaps, features and each image's own fit
    (made as in training, see ``regulator.fit_targets``); no heatmap nor fit for a model
    without patch weights."""

    def eval_step(params: Any, batch: Batch) -> dict[str, jax.Array]:
        out = model.apply({"params": params}, batch["image"], train=False)
        result = {
            "logits": out.logits,
            "probabilities": jax.nn.sigmoid(out.logits),
            "features": out.features,
        }
        if out.weights is not None:
            result["weights"] = out.weights
            result["regulators"] = regulator.fit(out.weights, fit_on)
        return result

    return eval_step


def jit_eval_step(config: ml_collections.ConfigDict, model: Any, **kw: Any):
    """The eval step jitted with the config's compiler options (``kw``: shardings)."""
    return jax.jit(
        make_eval_step(model, config.regulator.fit_on),
        compiler_options=conv.compiler_options(config.model.conv_impl),
        **kw,
    )


def jit_steps(config, model, tx, mesh, class_weights: Any = (1.0, 1.0),
              steps_per_epoch: int = 1):
    """Jit both steps over the mesh: batch split on ``data``, state replicated and donated."""
    rep, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    train_step = jax.jit(
        make_train_step(config, model, tx, class_weights, steps_per_epoch),
        in_shardings=(rep, data),
        out_shardings=(rep, rep),
        donate_argnums=0,
        compiler_options=conv.compiler_options(config.model.conv_impl),
    )
    eval_step = jit_eval_step(config, model, in_shardings=(rep, data), out_shardings=data)
    return train_step, eval_step


def abstract_params(config: ml_collections.ConfigDict, model: Any) -> Any:
    """Shapes and dtypes of the model's parameters, without computing them (for restoring)."""
    side = config.grid_size * config.patch_size
    return jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, side, side, 3), jnp.uint8))[
            "params"
        ]
    )

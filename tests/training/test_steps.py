"""The train step: it learns, and it writes back exactly the valid regulator fits (Alg. 1)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import smoke
from jaxcerv.model import networks as model_lib
from jaxcerv.model import regulator
from jaxcerv.training import steps


@functools.cache
def _compiled(mode, normalise="weights", loss="paper", logit_decay=0.0):
    """One compiled step per mode for the whole module (compilation dominates these tests)."""
    config = smoke.get_config()
    config.regulator.mode = mode
    config.regulator.normalise = normalise
    config.regulator.loss, config.regulator.logit_decay = loss, logit_decay
    model = model_lib.from_config(config)
    tx = steps.make_optimizer(config)
    state = steps.create_train_state(config, model, tx, 8, jax.random.PRNGKey(0))
    step = jax.jit(steps.make_train_step(config, model, tx), donate_argnums=0)
    side = config.grid_size * config.patch_size
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.integers(0, 255, size=(4, side, side, 3), dtype=np.uint8)),
        "label": jnp.array([0, 1, 0, 1], jnp.int32),
        "index": jnp.array([5, 1, 2, 7], jnp.int32),
        "mask": jnp.array([True, True, True, False]),
    }
    return config, model, state, step, batch


def _setup(mode="iterative", normalise="weights", loss="paper", logit_decay=0.0):
    config, model, state, step, batch = _compiled(mode, normalise, loss, logit_decay)
    return config, model, jax.tree.map(jnp.copy, state), step, batch  # the step donates its state


def test_step_lowers_loss_on_fixed_batch():
    _, _, state, step, batch = _setup()
    losses = []
    for _ in range(10):
        state, m = step(state, batch)
        losses.append(float(m["loss_sum"] / m["count"]))
    assert losses[-1] < 0.9 * losses[0], losses
    assert float(m["count"]) == 3  # the masked row does not count


def test_iterative_writes_fits_of_pre_update_weights_for_unmasked_rows():
    config, model, state, step, batch = _setup()
    g0 = np.asarray(state.regulators)
    out = model.apply({"params": state.params}, batch["image"])
    want = np.asarray(
        regulator.fit_gaussian(regulator.fit_targets(out.weights, config.regulator.fit_on))
    )
    new_state, m = step(state, batch)
    regs = np.asarray(new_state.regulators)
    np.testing.assert_allclose(regs[[5, 1, 2]], want[:3], rtol=1e-4)
    untouched = [0, 3, 4, 6, 7]  # 7 is the masked row's index
    np.testing.assert_array_equal(regs[untouched], g0[untouched])
    assert float(m["valid_fits"]) == 3


def test_invalid_fits_are_not_written_back():
    _, _, state, step, batch = _setup()
    params = jax.tree.map(lambda x: x, state.params)
    # A final weight bias of -1e4 makes every patch weight exactly 0: the fit is NaN, thus invalid.
    last = params["weight_mlp"]["Dense_3"]
    params["weight_mlp"]["Dense_3"] = {**last, "bias": jnp.full_like(last["bias"], -1e4)}
    state = state.replace(params=params)
    g0 = np.asarray(state.regulators)
    new_state, m = step(state, batch)
    np.testing.assert_array_equal(np.asarray(new_state.regulators), g0)
    assert float(m["valid_fits"]) == 0


@pytest.mark.parametrize("mode", ["fixed", "none"])
def test_ablation_modes_keep_g0(mode):
    _, _, state, step, batch = _setup(mode)
    g0 = np.asarray(state.regulators)
    new_state, _ = step(state, batch)
    np.testing.assert_array_equal(np.asarray(new_state.regulators), g0)


def test_none_mode_has_no_spatial_term():
    _, _, state_none, step_none, batch = _setup("none")
    _, m = step_none(state_none, batch)
    np.testing.assert_allclose(m["loss_sum"], m["bce_sum"], rtol=1e-6)


@pytest.mark.parametrize("fit_on", regulator.FIT_ON)
def test_fit_weights_hand_computed(fit_on):
    w = np.array([[0.2, 0.6], [0.4, 0.3]], np.float32)
    normalised = np.array([[0.0, 1.0], [0.5, 0.25]])
    want = {
        "weights": w,
        "normalised": normalised,
        "above_median": np.maximum(normalised - np.median(normalised), 0.0),
    }[fit_on]
    np.testing.assert_allclose(regulator.fit_targets(jnp.asarray(w), fit_on), want, rtol=1e-6)


def test_update_regulators_drops_unwritten_rows_even_with_duplicate_index():
    regs = jnp.zeros((4, 5))
    fits = jnp.stack([jnp.full(5, 1.0), jnp.full(5, 2.0)])
    out = regulator.scatter_rows(regs, jnp.array([2, 2]), fits, jnp.array([True, False]))
    out = np.asarray(out)
    np.testing.assert_array_equal(out[2], np.full(5, 1.0))
    np.testing.assert_array_equal(out[[0, 1, 3]], 0)


def _numpy_density(params: np.ndarray, grid: int) -> np.ndarray:
    """Oracle for Eq. 10: scipy's bivariate normal pdf at the patch centres (h = col + .5)."""
    from scipy.stats import multivariate_normal

    v, h = np.meshgrid(np.arange(grid) + 0.5, np.arange(grid) + 0.5, indexing="ij")
    mu_h, mu_v, s_hh, s_hv, s_vv = params
    pdf = multivariate_normal([mu_h, mu_v], [[s_hh, s_hv], [s_hv, s_vv]]).pdf
    return pdf(np.stack([h, v], axis=-1))


def _min_max(x: np.ndarray) -> np.ndarray:
    return (x - x.min()) / (x.max() - x.min())


def test_step_loss_is_bce_plus_lambda_spatial_from_the_batch_rows_regulators():
    """Oracle by hand: per image, BCE from the logit and sum(1 - norm(a) * norm(s)) with s the
    density of the regulator in row ``index`` (not row 0..B-1), combined as BCE + lambda * spatial
    and averaged over the unmasked rows."""
    config, model, state, step, batch = _setup()
    grid = config.grid_size
    rng = np.random.default_rng(1)
    regs = np.tile(np.asarray(regulator.initial_params((grid, grid))), (8, 1))
    for row in range(8):  # every row a different valid Gaussian
        a = rng.uniform(0.3, 1.2, (2, 2))
        cov = a @ a.T + 0.2 * np.eye(2)
        regs[row] = [*rng.uniform(0.5, grid - 0.5, 2), cov[0, 0], cov[0, 1], cov[1, 1]]
    state = state.replace(regulators=jnp.asarray(regs, jnp.float32))
    out = model.apply({"params": state.params}, batch["image"], train=True,
                      rngs={"dropout": jax.random.PRNGKey(0)})  # dropout is 0 in smoke
    weights, logits = np.asarray(out.weights, np.float64), np.asarray(out.logits, np.float64)
    labels = np.asarray(batch["label"], np.float64)
    index, mask = np.asarray(batch["index"]), np.asarray(batch["mask"])
    spatial = np.array([
        np.sum(1 - _min_max(weights[b]) * _min_max(_numpy_density(regs[index[b]], grid)))
        for b in range(len(index))
    ])
    bce = np.log1p(np.exp(-np.abs(logits))) + np.maximum(logits, 0) - logits * labels
    lam = config.regulator.lam
    _, m = step(state, batch)
    np.testing.assert_allclose(float(m["spatial_sum"]), spatial[mask].sum(), rtol=1e-4)
    np.testing.assert_allclose(float(m["bce_sum"]), bce[mask].sum(), rtol=1e-4)
    np.testing.assert_allclose(
        float(m["loss_sum"]), (bce + lam * spatial)[mask].sum(), rtol=1e-4
    )
    # Lambda matters: the spatial term is not negligible in this case.
    assert lam * spatial[mask].sum() > 1e-3 * bce[mask].sum()


def test_spatial_loss_on_logits_is_eq6_of_the_logits_and_blind_to_the_weight_bias():
    """regulator.normalise=logits: the step's spatial term is sum(1 - norm(z) * norm(s)) with z
    the weights' logits (oracle: log(a / (1 - a)) of the returned weights), and shifting the
    weight MLP's output bias, which moves every logit alike, leaves it unchanged; with the
    paper's norm(a) the same shift changes it (the drift that saturates the sigmoid)."""
    results = {}
    for normalise in ("weights", "logits"):
        config, model, state, step, batch = _setup(normalise=normalise)
        grid, index, mask = config.grid_size, np.asarray(batch["index"]), np.asarray(batch["mask"])
        density = [_numpy_density(np.asarray(state.regulators[i]), grid) for i in index]
        out = model.apply({"params": state.params}, batch["image"], train=True,
                          rngs={"dropout": jax.random.PRNGKey(0)})
        a = np.asarray(out.weights, np.float64)
        z = np.log(a / (1 - a)) if normalise == "logits" else a
        oracle = sum(np.sum(1 - _min_max(z[b]) * _min_max(density[b]))
                     for b in range(len(index)) if mask[b])
        _, m = step(jax.tree.map(jnp.copy, state), batch)
        np.testing.assert_allclose(float(m["spatial_sum"]), oracle, rtol=1e-3)
        shifted = jax.tree.map(jnp.copy, state)
        params = jax.tree.map(lambda x: x, shifted.params)
        params["weight_mlp"]["Dense_3"]["bias"] = params["weight_mlp"]["Dense_3"]["bias"] + 2.0
        _, m2 = step(shifted.replace(params=params), batch)
        results[normalise] = abs(float(m2["spatial_sum"]) - float(m["spatial_sum"]))
    assert results["logits"] < 1e-3 * float(m["spatial_sum"])
    assert results["weights"] > 1e-2, results


def test_softmax_outside_with_logit_decay_is_the_softmax_share_plus_the_squared_logits():
    """Oracle from the returned weights' logits z = log(a / (1 - a)): per image
    K * sum(softmax(z) * (1 - norm(s))) + decay * sum(z^2); the decay term is what moves when the
    weight MLP's bias shifts (the share alone is blind to it)."""
    decay = 0.01
    config, model, state, step, batch = _setup(normalise="logits", loss="softmax_outside",
                                               logit_decay=decay)
    grid, index, mask = config.grid_size, np.asarray(batch["index"]), np.asarray(batch["mask"])
    k = grid * grid

    def oracle(params):
        out = model.apply({"params": params}, batch["image"], train=True,
                          rngs={"dropout": jax.random.PRNGKey(0)})
        a = np.asarray(out.weights, np.float64)
        z = np.log(a / (1 - a))
        total = 0.0
        for b in np.flatnonzero(mask):
            share = np.exp(z[b] - z[b].max()) / np.exp(z[b] - z[b].max()).sum()
            s = _numpy_density(np.asarray(state.regulators[index[b]]), grid)
            total += k * np.sum(share * (1 - _min_max(s))) + decay * np.sum(z[b] ** 2)
        return total

    _, m = step(jax.tree.map(jnp.copy, state), batch)
    np.testing.assert_allclose(float(m["spatial_sum"]), oracle(state.params), rtol=1e-3)
    params = jax.tree.map(jnp.copy, state.params)
    params["weight_mlp"]["Dense_3"]["bias"] = params["weight_mlp"]["Dense_3"]["bias"] + 2.0
    want = oracle(params)  # before the step, which donates its state
    _, m2 = step(jax.tree.map(jnp.copy, state).replace(params=params), batch)
    np.testing.assert_allclose(float(m2["spatial_sum"]), want, rtol=1e-3)
    assert abs(float(m2["spatial_sum"]) - float(m["spatial_sum"])) > 1e-2


def test_step_reports_divergence():
    _, _, state, step, batch = _setup()
    poisoned = jax.tree.map(jnp.copy, state.params)
    kernel = poisoned["classifier"]["Dense_0"]["kernel"]
    poisoned["classifier"]["Dense_0"]["kernel"] = kernel.at[0, 0].set(jnp.nan)
    _, m = step(state, batch)
    assert bool(m["healthy"])
    _, _, state, step, batch = _setup()
    _, m = step(state.replace(params=poisoned), batch)
    assert not bool(m["healthy"])


def test_class_weights_scale_each_images_bce_in_the_loss():
    """The loss of a step with class weights (w0, w1) = the hand-weighted mean of the per-image
    BCE (unmasked rows) plus lambda * spatial; the logged BCE stays unweighted."""
    config, model, state, _, batch = _setup("none")  # no spatial term: the loss is the BCE
    weights = (3.0, 0.5)
    weighted_step = jax.jit(steps.make_train_step(config, model, steps.make_optimizer(config),
                                                  weights))
    out = model.apply({"params": state.params}, batch["image"])
    logits, labels = np.asarray(out.logits, np.float64), np.asarray(batch["label"])
    bce = np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))
    keep = np.asarray(batch["mask"])
    w = np.where(labels == 1, weights[1], weights[0])
    _, m = weighted_step(state, batch)
    assert float(m["loss_sum"] / m["count"]) == pytest.approx(
        (w * bce)[keep].sum() / keep.sum(), rel=1e-4)
    assert float(m["bce_sum"]) == pytest.approx(bce[keep].sum(), rel=1e-4)


def test_freeze_encoder_steps_holds_the_encoder_still_then_trains_it():
    config = smoke.get_config()
    config.train.freeze_encoder_steps = 2
    tx = steps.make_optimizer(config)
    params = {"encoder": {"w": jnp.ones(3)}, "head": {"w": jnp.ones(3)}}
    grads = jax.tree.map(jnp.ones_like, params)
    state = tx.init(params)
    history = []
    for _ in range(3):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        history.append(jax.tree.map(np.asarray, params))
    for p in history[:2]:  # frozen: only the head moved
        np.testing.assert_array_equal(p["encoder"]["w"], np.ones(3))
    assert np.all(history[0]["head"]["w"] < 1)
    assert np.all(history[2]["encoder"]["w"] < 1)


def test_warmup_cosine_learning_rate_matches_the_hand_formula():
    """Linear from 0 to the peak over the warm-up, then 0.5 * (1 + cos(pi t)) decay to the floor;
    "constant" is the plain float (the paper's Adam, unchanged)."""
    config = smoke.get_config()
    config.train.learning_rate, config.train.epochs = 1e-3, 10
    assert steps.learning_rate(config, 5) == 1e-3
    config.train.schedule, config.train.warmup_epochs = "warmup_cosine", 2
    config.train.final_lr_fraction = 0.1
    total, warm = 50, 10
    for step in (0, 5, 10, 30, 50):
        if step < warm:
            want = 1e-3 * step / warm
        else:
            t = (step - warm) / (total - warm)
            want = 1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + np.cos(np.pi * t))
        np.testing.assert_allclose(steps.lr_at(config, 5, step), want, rtol=1e-5, atol=1e-12)
    config.train.schedule = "linear"
    with pytest.raises(ValueError, match="train.schedule='linear'"):
        steps.learning_rate(config, 5)


def test_lambda_hold_trains_on_the_bce_alone_then_adds_the_spatial_loss():
    """regulator.lam_hold_epochs=1 at 2 steps per epoch: steps 0-1 take lambda 0 (loss = BCE),
    step 2 takes lambda (loss = BCE + lambda * spatial)."""
    config, model, state, _, batch = _setup()
    config = config.copy_and_resolve_references()
    config.regulator.lam_hold_epochs = 1
    tx = steps.make_optimizer(config)
    step = jax.jit(steps.make_train_step(config, model, tx, steps_per_epoch=2))
    lam = config.regulator.lam
    for k in range(3):
        state, m = step(state, batch)
        want = float(m["bce_sum"]) + (lam * float(m["spatial_sum"]) if k == 2 else 0.0)
        np.testing.assert_allclose(float(m["loss_sum"]), want, rtol=1e-5)
    assert lam * float(m["spatial_sum"]) > 1e-3 * float(m["bce_sum"])


@pytest.mark.parametrize("kernel", ["flat_top", "mixture"])
def test_other_kernels_train_and_write_their_own_fits(kernel):
    """regulator.kernel: the state widens to the kernel's size, starts at its G0 and a step writes
    the kernel's fit of the pre-update weights into the unmasked rows."""
    config, model, _, _, batch = _setup()
    config = config.copy_and_resolve_references()
    config.regulator.kernel = kernel
    tx = steps.make_optimizer(config)
    state = steps.create_train_state(config, model, tx, 8, jax.random.PRNGKey(0))
    grid = (config.grid_size, config.grid_size)
    assert state.regulators.shape == (8, regulator.state_size(kernel))
    np.testing.assert_allclose(state.regulators[0], regulator.initial_state(grid, 0.0, kernel))
    out = model.apply({"params": state.params}, batch["image"])
    want = np.asarray(regulator.fit(out.weights, config.regulator.fit_on, kernel))
    new, m = jax.jit(steps.make_train_step(config, model, tx))(state, batch)
    valid = np.asarray(regulator.kernel_valid(want, grid, kernel)) & np.asarray(batch["mask"])
    rows = np.asarray(batch["index"])
    np.testing.assert_allclose(np.asarray(new.regulators)[rows[valid]], want[valid], rtol=1e-4,
                               atol=1e-5)
    assert np.isfinite(float(m["loss_sum"]))


def test_stopping_criterion_in_the_step_freezes_rows_and_counts_them():
    """regulator.stop_kl huge, stop_epochs 1: the first step's fits all agree (counts 1, written),
    so the second step writes nothing into those rows; off (stop_kl 0) nothing is counted."""
    config, model, state, step, batch = _setup()
    new, _ = step(jax.tree.map(jnp.copy, state), batch)
    assert not np.asarray(new.regulator_agree).any()  # the paper: no criterion
    config = config.copy_and_resolve_references()
    config.regulator.stop_kl, config.regulator.stop_epochs = 1e9, 1
    tx = steps.make_optimizer(config)
    stop_step = jax.jit(steps.make_train_step(config, model, tx))
    first, _ = stop_step(state, batch)
    rows = np.asarray(batch["index"])[np.asarray(batch["mask"])]
    agree = np.asarray(first.regulator_agree)
    assert (agree[rows] == 1).all() and agree.sum() == len(rows)
    second, m = stop_step(first, batch)
    assert float(m["valid_fits"]) > 0
    np.testing.assert_array_equal(np.asarray(second.regulators), np.asarray(first.regulators))


def test_ema_params_follow_the_numpy_recurrence():
    """train.ema_epochs=2 at 2 steps per epoch is a decay of 1 - 1/4: after each step the
    average is 0.75 * average + 0.25 * the new parameters (numpy oracle over the recorded
    parameters), it starts at the initial ones, and eval_params reads it; off, there is none."""
    config = smoke.get_config()
    config.train.ema_epochs = 0.0
    assert steps.create_train_state(
        config, model_lib.from_config(config), steps.make_optimizer(config), 8,
        jax.random.PRNGKey(0)).ema_params is None
    config.train.ema_epochs = 2.0
    assert steps.ema_decay(config, 2) == 0.75 and steps.served_params_key(config) == "ema_params"
    model = model_lib.from_config(config)
    tx = steps.make_optimizer(config)
    state = steps.create_train_state(config, model, tx, 8, jax.random.PRNGKey(0))
    step = jax.jit(steps.make_train_step(config, model, tx, steps_per_epoch=2))
    _, _, _, _, batch = _setup()
    oracle = [np.asarray(x, np.float64) for x in jax.tree.leaves(state.params)]
    for _ in range(3):
        state, _ = step(state, batch)
        oracle = [0.75 * e + 0.25 * np.asarray(p, np.float64)
                  for e, p in zip(oracle, jax.tree.leaves(state.params), strict=True)]
    got = jax.tree.leaves(steps.eval_params(state))
    assert len(got) == len(oracle)
    for g, want in zip(got, oracle, strict=True):
        np.testing.assert_allclose(np.asarray(g), want, rtol=1e-5, atol=1e-7)
    assert not all(np.allclose(a, b) for a, b in zip(
        jax.tree.leaves(state.params), jax.tree.leaves(state.ema_params), strict=True))

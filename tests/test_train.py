"""The train step: it learns, and it writes back exactly the valid regulator fits (Alg. 1)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import smoke
from jaxcerv import model as model_lib
from jaxcerv import regulator, steps


@functools.cache
def _compiled(mode):
    """One compiled step per mode for the whole module (compilation dominates these tests)."""
    config = smoke.get_config()
    config.regulator.mode = mode
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


def _setup(mode="iterative"):
    config, model, state, step, batch = _compiled(mode)
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

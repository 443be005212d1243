"""The model's structure against straightforward loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcerv import model as model_lib


def test_patchify_matches_slicing():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, size=(2, 3 * 4, 5 * 4, 3), dtype=np.uint8)
    got = np.asarray(model_lib.patchify(jnp.asarray(img), 4))
    assert got.shape == (2, 15, 4, 4, 3)
    for i in range(3):
        for j in range(5):
            np.testing.assert_array_equal(
                got[:, i * 5 + j], img[:, i * 4 : (i + 1) * 4, j * 4 : (j + 1) * 4]
            )


def test_patchify_rejects_partial_patches():
    with pytest.raises(ValueError, match="whole number"):
        model_lib.patchify(jnp.zeros((1, 30, 28, 3)), 28)


def _small_model(aggregation="mean"):
    return model_lib.PatchWiseModel(
        patch_size=8,
        conv_features=(4, 6, 8),
        weight_hidden=(16, 8),
        classifier_hidden=(8, 4),
        aggregation=aggregation,
        feature_norm=False,
    )


@pytest.mark.parametrize("aggregation", ["mean", "sum", "concat"])
def test_batched_encoder_model_equals_per_patch_loop(aggregation):
    m = _small_model(aggregation)
    rng = np.random.default_rng(1)
    img = jnp.asarray(rng.integers(0, 255, size=(2, 24, 16, 3), dtype=np.uint8))
    variables = m.init(jax.random.PRNGKey(0), img)
    out = m.apply(variables, img)
    p = variables["params"]
    patches = model_lib.patchify((img.astype(jnp.float32) - 127.5) / 64.0, 8)
    enc = model_lib.PatchEncoder((4, 6, 8))
    mlp = model_lib.MLP((16, 8), 1)
    g = jnp.stack(
        [
            jnp.stack(
                [
                    enc.apply({"params": p["encoder"]}, patches[b, k][None])[0]
                    for k in range(patches.shape[1])
                ]
            )
            for b in range(2)
        ]
    )
    a = jax.nn.sigmoid(mlp.apply({"params": p["weight_mlp"]}, g))[..., 0]
    np.testing.assert_allclose(out.weights, a.reshape(2, 3, 2), rtol=1e-5, atol=1e-6)
    weighted = a[..., None] * g
    f = {"mean": weighted.mean(1), "sum": weighted.sum(1), "concat": weighted.reshape(2, -1)}[
        aggregation
    ]
    np.testing.assert_allclose(out.features, f, rtol=1e-5, atol=1e-6)
    logits = model_lib.MLP((8, 4), 1).apply({"params": p["classifier"]}, f)[:, 0]
    np.testing.assert_allclose(out.logits, logits, rtol=1e-5, atol=1e-6)


def test_weights_are_probabilities_and_shapes():
    m = _small_model()
    img = jnp.zeros((3, 32, 32, 3), jnp.uint8)
    out = m.apply(m.init(jax.random.PRNGKey(0), img), img)
    assert out.logits.shape == (3,) and out.weights.shape == (3, 4, 4)
    assert out.features.shape == (3, 8 * 1 * 1)
    assert np.all((np.asarray(out.weights) > 0) & (np.asarray(out.weights) < 1))


def test_unknown_aggregation():
    with pytest.raises(ValueError, match="unknown aggregation"):
        model_lib.aggregate(jnp.zeros((1, 2, 3)), "max")


@pytest.mark.parametrize("chunk", [4, 5])  # 64 patches: 16 whole chunks, or 13 with a padded one
def test_remat_in_chunks_lowers_peak_memory_and_keeps_outputs_and_gradients(chunk):
    x = jnp.asarray(np.random.default_rng(2).integers(0, 255, (4, 8 * 28, 8 * 28, 3), np.uint8))
    temp, grads, outs = {}, {}, {}
    for remat in (False, True):
        m = model_lib.PatchWiseModel(weight_hidden=(32, 16), remat=remat, remat_chunk=chunk)
        params = m.init(jax.random.PRNGKey(0), x[:1])["params"]

        def loss(p, m=m):
            out = m.apply({"params": p}, x)
            return jnp.sum(out.logits) + jnp.sum(out.weights)

        step = jax.jit(jax.grad(loss))
        temp[remat] = step.lower(params).compile().memory_analysis().temp_size_in_bytes
        grads[remat] = step(params)
        outs[remat] = m.apply({"params": params}, x)
    # The backward pass holds one chunk's encoder activations instead of all 256 patches'.
    assert temp[True] < 0.5 * temp[False], temp
    for a, b in zip(outs[True], outs[False], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(grads[True]), jax.tree.leaves(grads[False]), strict=True):
        # Chunked sums reassociate float additions: compare against each tensor's scale.
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))


def test_bf16_model_close_to_float32_with_float32_params_and_gradients():
    """The bfloat16 path (Dense and space-to-depth conv products in bfloat16, float32
    accumulation; conv_impl s2d2 so that conv_valid_dots runs, in remat chunks) against the same
    model in float32. Each of the 7 layers rounds its operands to 8 significant bits (2**-9
    relative); the errors add to ~1% of an output's scale, so 3e-2 leaves a margin while a wrong
    product is off by O(1). Gradients: pool windows whose candidates tie within bfloat16 rounding
    send single entries elsewhere, so they are compared as directions (cosine >= 0.99)."""
    x = jnp.asarray(np.random.default_rng(3).integers(0, 255, (2, 4 * 28, 4 * 28, 3), np.uint8))
    outs, grads = {}, {}
    for dtype in (jnp.float32, jnp.bfloat16):
        m = model_lib.PatchWiseModel(
            weight_hidden=(64, 32), dtype=dtype, remat=True, remat_chunk=5, conv_impl="s2d2"
        )
        params = m.init(jax.random.PRNGKey(0), x[:1])["params"]

        def loss(p, m=m):
            out = m.apply({"params": p}, x)
            return jnp.sum(jnp.sin(out.logits)) + jnp.sum(out.weights**2)

        outs[dtype] = m.apply({"params": params}, x)
        grads[dtype] = jax.jit(jax.grad(loss))(params)
    for a, b in zip(outs[jnp.bfloat16], outs[jnp.float32], strict=True):
        assert a.dtype == jnp.float32
        # The logits' own values are small differences of unit-scale (LayerNorm) terms: their
        # scale is 1, not their magnitude.
        scale = max(float(np.abs(b).max()), 1.0 if b.ndim == 1 else 0.0)
        np.testing.assert_allclose(a, b, rtol=0, atol=3e-2 * scale)
    for a, b in zip(jax.tree.leaves(grads[jnp.bfloat16]), jax.tree.leaves(grads[jnp.float32]),
                    strict=True):
        assert a.dtype == jnp.float32
        a, b = np.ravel(a), np.ravel(b)
        assert np.dot(a, b) >= 0.99 * np.linalg.norm(a) * np.linalg.norm(b)

"""The model's structure against straightforward loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcerv.model import networks as model_lib


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


@pytest.mark.parametrize("aggregation", ["mean", "sum", "weighted_mean", "concat"])
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
    f = {
        "mean": weighted.mean(1),
        "sum": weighted.sum(1),
        "weighted_mean": weighted.sum(1) / a.sum(1)[:, None],
        "concat": weighted.reshape(2, -1),
    }[aggregation]
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
        model_lib.aggregate(jnp.ones((1, 2, 1)), jnp.zeros((1, 2, 3)), "max")


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


# --------------------------------------------------------------------------- baselines, init_from

from jaxcerv.configs import smoke  # noqa: E402

from jaxcerv.training import steps  # noqa: E402


def _whole(family, **kw):
    return model_lib.WholeImageCNN(family=family, input_size=kw.pop("input_size", 32),
                                   width=kw.pop("width", 0.125), **kw)


@pytest.mark.parametrize("family", model_lib.WHOLE_IMAGE)
def test_whole_image_baselines_give_logits_and_no_patch_weights(family):
    m = _whole(family)
    img = jnp.asarray(np.random.default_rng(0).integers(0, 255, (2, 56, 56, 3), np.uint8))
    out = m.apply(m.init(jax.random.PRNGKey(0), img), img)
    assert out.weights is None
    assert out.logits.shape == (2,) and out.features.shape[0] == 2
    assert np.all(np.isfinite(np.asarray(out.logits)))


def test_center_crop_keeps_the_centre_as_slicing_does():
    img = np.arange(2 * 10 * 10 * 3).reshape(2, 10, 10, 3)
    np.testing.assert_array_equal(model_lib.center_crop(jnp.asarray(img), 0.6), img[:, 2:8, 2:8])
    np.testing.assert_array_equal(model_lib.center_crop(jnp.asarray(img), 1.0), img)


def test_crop_changes_what_a_whole_image_model_sees():
    """With crop 0.5 the border pixels cannot move the output; without it they do."""
    img = np.random.default_rng(1).integers(0, 255, (1, 64, 64, 3), np.uint8)
    border = img.copy()
    border[:, :8] = 255 - border[:, :8]
    for crop, same in ((0.5, True), (1.0, False)):
        m = _whole("lenet", center_crop=crop)
        params = m.init(jax.random.PRNGKey(0), jnp.asarray(img))
        a, b = (np.asarray(m.apply(params, jnp.asarray(x)).logits) for x in (img, border))
        assert np.allclose(a, b) == same


def _train_once(config, model):
    tx = steps.make_optimizer(config)
    state = steps.create_train_state(config, model, tx, 8, jax.random.PRNGKey(0))
    side = config.grid_size * config.patch_size
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.integers(0, 255, (8, side, side, 3), np.uint8)),
             "label": jnp.asarray(np.arange(8) % 2), "index": jnp.arange(8),
             "mask": jnp.ones(8, bool)}
    new, metrics = jax.jit(steps.make_train_step(config, model, tx))(state, batch)
    return state, new, metrics


@pytest.mark.parametrize("frozen", [0, 2])
def test_vgg_freeze_blocks_leaves_the_lower_blocks_untouched(frozen):
    config = smoke.get_config()
    config.model.family, config.regulator.mode = "vgg16", "none"
    config.model.width, config.model.input_size, config.model.freeze_blocks = 0.0625, 32, frozen
    model = model_lib.from_config(config)
    old, new, metrics = _train_once(config, model)
    old_flat = model_lib.flatten_params(old.params)
    new_flat = model_lib.flatten_params(new.params)
    # Conv_0..Conv_3 are blocks 1-2 (two convs each); Conv_4 starts block 3.
    for k in sorted(old_flat):
        lower = k.split("/")[0] in ("Conv_0", "Conv_1", "Conv_2", "Conv_3")
        unchanged = np.array_equal(old_flat[k], new_flat[k])
        assert unchanged == (lower and frozen == 2), k
    # No patch weights: no spatial loss and no regulator update.
    assert float(metrics["spatial_sum"]) == 0.0 and float(metrics["valid_fits"]) == 0.0
    np.testing.assert_array_equal(np.asarray(new.regulators), np.asarray(old.regulators))


def test_abmil_attention_is_a_softmax_and_pools_the_encoder_features():
    m = model_lib.AttentionMIL(patch_size=8, conv_features=(4, 6, 8), attention_hidden=5,
                               classifier_hidden=(4,))
    img = jnp.asarray(np.random.default_rng(3).integers(0, 255, (2, 24, 16, 3), np.uint8))
    variables = m.init(jax.random.PRNGKey(0), img)
    out = m.apply(variables, img)
    a = np.asarray(out.weights)
    assert a.shape == (2, 3, 2)
    np.testing.assert_allclose(a.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    patches = model_lib.patchify((img.astype(jnp.float32) - 127.5) / 64.0, 8)
    h = np.asarray(model_lib.PatchEncoder((4, 6, 8)).apply(
        {"params": variables["params"]["encoder"]}, patches.reshape(12, 8, 8, 3))).reshape(2, 6, -1)
    expected = (a.reshape(2, 6, 1) * h).sum(axis=1)
    np.testing.assert_allclose(out.features, expected, rtol=1e-4, atol=1e-6)


def test_init_from_loads_named_arrays_and_refuses_wrong_names_or_shapes(tmp_path):
    config = smoke.get_config()
    model = model_lib.from_config(config)
    tx = steps.make_optimizer(config)
    fresh = model_lib.flatten_params(
        steps.create_train_state(config, model, tx, 8, jax.random.PRNGKey(0)).params)
    # A file with only the encoder's first kernel, drawn independently of the model.
    name = "encoder/Conv_0/kernel"
    assert name in fresh
    kernel = np.random.default_rng(5).normal(size=fresh[name].shape).astype(np.float32)
    path = str(tmp_path / "init.npz")
    np.savez(path, **{name: kernel})
    config.model.init_from = path
    loaded = model_lib.flatten_params(
        steps.create_train_state(config, model, tx, 8, jax.random.PRNGKey(0)).params)
    np.testing.assert_array_equal(loaded[name], kernel)
    for k in fresh:
        if k != name:
            np.testing.assert_array_equal(loaded[k], fresh[k])
    # The loop builds the state inside jit (parallel.replicated_init): loading must trace.
    traced = model_lib.flatten_params(jax.jit(
        lambda key: steps.create_train_state(config, model, tx, 8, key))(jax.random.PRNGKey(0)
    ).params)
    np.testing.assert_array_equal(traced[name], kernel)
    np.savez(path, **{"encoder/Conv_9/kernel": kernel})
    with pytest.raises(model_lib.InitError, match="not parameters of this model"):
        model_lib.load_init(model_lib.flatten_params(fresh), path)
    np.savez(path, **{name: kernel[..., :1]})
    with pytest.raises(model_lib.InitError, match="shape"):
        model_lib.load_init(model_lib.flatten_params(fresh), path)


def test_save_params_round_trips_through_init_from(tmp_path):
    config = smoke.get_config()
    model = model_lib.from_config(config)
    params = model.init(jax.random.PRNGKey(1), jnp.zeros((1, 112, 112, 3), jnp.uint8))["params"]
    path = str(tmp_path / "p.npz")
    model_lib.save_params(params, path)
    other = model.init(jax.random.PRNGKey(2), jnp.zeros((1, 112, 112, 3), jnp.uint8))["params"]
    back = model_lib.load_init(other, path)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("family,remat", [("patchwise", False), ("patchwise", True),
                                          ("abmil", False)])
def test_weight_logits_are_the_weights_before_their_squashing(family, remat):
    """What regulator.normalise=logits normalises: sigmoid(logits) are the patch weights (softmax
    over the patches for ABMIL), on the grid, in both the plain and the rematerialised path."""
    from configs import smoke

    config = smoke.get_config()
    config.model.family, config.model.remat = family, remat
    model = model_lib.from_config(config)
    side = config.grid_size * config.patch_size
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, side, side, 3), np.uint8))
    params = model.init(jax.random.PRNGKey(0), images)["params"]
    out = model.apply({"params": params}, images)
    z = np.asarray(out.weight_logits, np.float64)
    assert z.shape == out.weights.shape == (2, config.grid_size, config.grid_size)
    if family == "abmil":
        expect = np.exp(z) / np.exp(z).sum(axis=(1, 2), keepdims=True)
    else:
        expect = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(np.asarray(out.weights), expect, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name, warned", [("paper", False), ("paper_gpu", True)])
def test_gpu_settings_on_cpu_say_which_config_is_faster(name, warned, caplog):
    """paper_gpu's remat off + bfloat16 are slower on a CPU (README, Performance): one warning
    line names the faster config there; the CPU settings get none."""
    import importlib

    config = importlib.import_module(f"jaxcerv.configs.{name}").get_config()
    model_lib.from_config(config)
    text = " ".join(r.getMessage() for r in caplog.records)
    assert ("--config=paper)" in text) == (warned and jax.default_backend() == "cpu")


@pytest.mark.parametrize("remat", [False, True])
def test_spatial_loss_reaches_the_weight_mlp_only_when_told(remat):
    """reaches=weight_mlp: the same forward values; a loss on the returned weights moves the
    weight MLP by the same gradient as before and the encoder not at all, while a loss on the
    logit still reaches the encoder by the same gradient."""
    kw = dict(patch_size=8, conv_features=(4, 6, 8), weight_hidden=(16, 8),
              classifier_hidden=(8, 4), remat=remat, remat_chunk=2)
    full = model_lib.PatchWiseModel(**kw)
    mlp_only = model_lib.PatchWiseModel(**kw, spatial_into_encoder=False)
    rng = np.random.default_rng(3)
    img = jnp.asarray(rng.integers(0, 255, size=(2, 24, 16, 3), dtype=np.uint8))
    params = full.init(jax.random.PRNGKey(0), img)["params"]
    assert jax.tree.structure(params) == jax.tree.structure(
        mlp_only.init(jax.random.PRNGKey(0), img)["params"])
    a = full.apply({"params": params}, img, train=True)
    b = mlp_only.apply({"params": params}, img, train=True)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6)

    def grads(model, which):
        def loss(p):
            out = model.apply({"params": p}, img, train=True)
            return jnp.sum(out.weight_logits ** 2) if which == "spatial" else jnp.sum(out.logits)
        return jax.grad(loss)(params)

    g_full, g_mlp = grads(full, "spatial"), grads(mlp_only, "spatial")
    assert all(np.all(np.asarray(v) == 0) for v in jax.tree.leaves(g_mlp["encoder"]))
    assert any(np.any(np.asarray(v) != 0) for v in jax.tree.leaves(g_full["encoder"]))
    for x, y in zip(jax.tree.leaves(g_full["weight_mlp"]), jax.tree.leaves(g_mlp["weight_mlp"]),
                    strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    for x, y in zip(jax.tree.leaves(grads(full, "bce")), jax.tree.leaves(grads(mlp_only, "bce")),
                    strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_params_only_copy_has_the_two_pass_gradients():
    """The one-pass copy against the straightforward form (a second pass on stop_gradient(x)):
    same values, same gradient for the parameters and for x."""
    rng = np.random.default_rng(7)
    p = {"w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
         "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}
    x = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
    c1, c2 = (jnp.asarray(rng.normal(size=(4, 3)), jnp.float32) for _ in range(2))

    def apply(q, v):
        return jnp.tanh(v @ q["w"] + q["b"]) ** 2

    def one_pass(q, v):
        y, y_copy = model_lib.params_only_copy(apply)(q, v)
        return jnp.sum(y * c1) + jnp.sum(y_copy * c2)

    def two_pass(q, v):
        return jnp.sum(apply(q, v) * c1) + jnp.sum(apply(q, jax.lax.stop_gradient(v)) * c2)

    np.testing.assert_allclose(one_pass(p, x), two_pass(p, x), rtol=1e-6)
    got, want = jax.grad(one_pass, (0, 1))(p, x), jax.grad(two_pass, (0, 1))(p, x)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # x's gradient is the first output's alone: c2 does not reach it
    np.testing.assert_allclose(got[1], jax.grad(lambda v: jnp.sum(apply(p, v) * c1))(x),
                               rtol=1e-5, atol=1e-6)


def test_weighted_mean_stays_finite_where_every_weight_underflows():
    """Weight logits near -300 (every sigmoid 0 in float32): sum(a g) / sum(a) would be NaN. The
    weighted mean reads the weights in log space, so it is finite, and (sigmoid(z) ~ exp(z) there)
    shifting every logit by 10 leaves it unchanged, as the exact weighted mean does."""
    kw = dict(patch_size=8, conv_features=(4, 6, 8), weight_hidden=(16, 8),
              classifier_hidden=(8, 4), aggregation="weighted_mean")
    rng = np.random.default_rng(9)
    img = jnp.asarray(rng.integers(0, 255, size=(2, 24, 16, 3), dtype=np.uint8))
    params = model_lib.PatchWiseModel(**kw).init(jax.random.PRNGKey(0), img)["params"]
    feats = []
    for bias in (-300.0, -310.0):
        p = jax.tree.map(lambda x: x, params)
        p["weight_mlp"]["Dense_2"]["bias"] = jnp.full_like(p["weight_mlp"]["Dense_2"]["bias"],
                                                           bias)
        out = model_lib.PatchWiseModel(**kw).apply({"params": p}, img)
        assert np.all(np.asarray(out.weights) == 0)
        assert np.all(np.isfinite(out.features)) and np.all(np.isfinite(out.logits))
        feats.append(np.asarray(out.features))
    np.testing.assert_allclose(feats[0], feats[1], rtol=1e-4, atol=1e-5)

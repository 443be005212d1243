"""The fast encoder layers (jaxcerv/model/conv.py) against the plain nn.Conv + nn.max_pool.

Oracle: the plain Flax layer, ``nn.max_pool(relu(nn.Conv(x)))``, whose gradients come from XLA's
own convolution and select-and-scatter. Tolerance: float32 results agree to 1e-5 of their scale
(relative 1e-4 for gradients, which sum ~1e4 products in a different order).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcerv.model import conv
from jaxcerv.model import networks as model_lib

FAST = conv.IMPLS[1:]  # every implementation but the reference "xla"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _reference(x, kernel, bias):
    y = nn.Conv(kernel.shape[-1], (3, 3), padding="SAME").apply(
        {"params": {"kernel": kernel, "bias": bias}}, x
    )
    return nn.max_pool(nn.relu(y), (2, 2), strides=(2, 2))


def _data(n, side, c_in, c_out, seed=0, flat=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, side, side, c_in)).astype(np.float32)
    if flat:  # a constant region: pool windows tie exactly
        x[:, : side // 2, : side // 2] = 0.5
    kernel = (rng.standard_normal((3, 3, c_in, c_out)) * 0.3).astype(np.float32)
    bias = (rng.standard_normal(c_out) * 0.1).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(bias)


def _grads(fn, x, kernel, bias):
    # A non-linear read-out so every output element has its own cotangent.
    return jax.grad(lambda x, k, b: jnp.sum(jnp.sin(3.0 * fn(x, k, b))), argnums=(0, 1, 2))(
        x, kernel, bias
    )


def _close(a, b, rtol):
    scale = float(jnp.max(jnp.abs(b)))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=rtol * max(scale, 1e-6))


# (side, c_in, c_out, layer): the paper's three layers, including the odd 7 -> 3 pool.
LAYERS = [(28, 3, 12, 0), (14, 12, 24, 1), (7, 24, 48, 2)]


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("side,c_in,c_out,layer", LAYERS)
def test_layer_matches_flax(impl, side, c_in, c_out, layer):
    x, kernel, bias = _data(6, side, c_in, c_out)
    fast = jax.jit(lambda x, k, b: conv.conv_pool_relu(x, k, b, impl, layer))
    _close(fast(x, kernel, bias), _reference(x, kernel, bias), 1e-5)
    for got, want in zip(
        _grads(fast, x, kernel, bias), _grads(_reference, x, kernel, bias), strict=True
    ):
        _close(got, want, 1e-4)


@pytest.mark.parametrize("impl", FAST)
def test_ties_route_gradient_like_select_and_scatter(impl):
    """A flat image region makes whole pool windows tie; the parameter gradients must still be
    the reference's (one window element gets it, not each tied one)."""
    x, kernel, bias = _data(4, 28, 3, 12, flat=True)
    fast = jax.jit(lambda x, k, b: conv.conv_pool_relu(x, k, b, impl, layer=0))
    got, want = _grads(fast, x, kernel, bias), _grads(_reference, x, kernel, bias)
    _close(got[1], want[1], 1e-4)
    _close(got[2], want[2], 1e-4)
    if impl not in ("s2d", "s2d2"):
        # s2d computes the tied values with a different kernel, so rounding may pick another of
        # the tied pixels: the image gradient (never used in training) can then differ.
        _close(got[0], want[0], 1e-4)


def test_max_pool2_first_maximum_wins():
    y = jnp.asarray(np.array([[1.0, 3.0], [3.0, 3.0]], np.float32).reshape(1, 2, 2, 1))
    g = jax.grad(lambda y: jnp.sum(conv.max_pool2(y)))(y)
    np.testing.assert_array_equal(np.asarray(g).reshape(2, 2), [[0.0, 1.0], [0.0, 0.0]])


@pytest.mark.parametrize("im2col", [False, True])
def test_conv_valid_gradient_is_the_convolution_gradient(im2col):
    """Oracle: XLA's own autodiff of the convolution (a non-square kernel on purpose)."""
    x, _, _ = _data(3, 9, 5, 7)
    kernel = jnp.asarray(np.random.default_rng(2).standard_normal((3, 2, 5, 7)), jnp.float32)
    plain = lambda x, k: conv._conv_valid(x, k)  # noqa: E731
    cot = jnp.asarray(np.random.default_rng(1).standard_normal((3, 7, 8, 7)), jnp.float32)
    (dx0, dk0) = jax.vjp(plain, x, kernel)[1](cot)
    (dx1, dk1) = jax.vjp(lambda x, k: conv.conv_valid(x, k, im2col), x, kernel)[1](cot)
    _close(dx1, dx0, 1e-5)
    _close(dk1, dk0, 1e-5)


def _bf16_exact(shape, seed):
    """Random float32 values that bfloat16 holds exactly: casting them loses nothing, and a
    product of two has 16 significant bits, exact in float32. A bfloat16-operand product with
    float32 accumulation then differs from float64 only by float32 rounding of the sums."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32))


def _conv_valid_np(x, k):
    """Oracle: the VALID convolution as a float64 sum over the kernel taps."""
    kh, kw = k.shape[:2]
    oh, ow = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    x, k = x.astype(np.float64), k.astype(np.float64)
    return sum(
        np.einsum("nhwc,cf->nhwf", x[:, i : i + oh, j : j + ow], k[i, j])
        for i in range(kh) for j in range(kw)
    )


@pytest.mark.parametrize("shape,kshape", [((3, 8, 8, 48), (2, 2, 48, 96)),
                                          ((2, 9, 7, 5), (3, 2, 5, 7))])
def test_conv_valid_dots_and_gradients_against_float64(shape, kshape):
    """Values and both gradients of the bfloat16-product convolution; inputs and cotangent are
    bfloat16-exact, so the only error is float32 summation: relative 1e-5 of the scale."""
    x, k = _bf16_exact(shape, 0), _bf16_exact(kshape, 1)
    want = _conv_valid_np(x, k)
    y, vjp = jax.vjp(conv.conv_valid_dots, jnp.asarray(x), jnp.asarray(k))
    assert y.dtype == jnp.float32
    _close(y, want, 1e-5)
    dy = _bf16_exact(want.shape, 2)
    dx, dk = vjp(jnp.asarray(dy))
    # Oracle gradients: d<dy, conv(x, k)> by the definition, in float64.
    want_dk = np.stack([np.stack([
        np.einsum("nhwc,nhwf->cf", x[:, i : i + dy.shape[1], j : j + dy.shape[2]], dy)
        for j in range(kshape[1])]) for i in range(kshape[0])])
    want_dx = np.zeros(shape)
    for i in range(kshape[0]):
        for j in range(kshape[1]):
            want_dx[:, i : i + dy.shape[1], j : j + dy.shape[2]] += np.einsum(
                "nhwf,cf->nhwc", dy.astype(np.float64), k[i, j].astype(np.float64))
    _close(dk, want_dk, 1e-5)
    _close(dx, want_dx, 1e-5)


def test_matmul_bf16_and_its_gradients_against_float64():
    x, w, g = _bf16_exact((37, 50), 0), _bf16_exact((50, 9), 1), _bf16_exact((37, 9), 2)
    y, vjp = jax.vjp(conv.matmul_bf16, jnp.asarray(x), jnp.asarray(w))
    x64, w64, g64 = (a.astype(np.float64) for a in (x, w, g))
    _close(y, x64 @ w64, 1e-6)
    dx, dw = vjp(jnp.asarray(g))
    _close(dx, g64 @ w64.T, 1e-6)
    _close(dw, x64.T @ g64, 1e-6)
    # Dense's contraction of a (B, K, F) input, through the nn.Dense hook.
    x3 = jnp.asarray(x).reshape(1, 37, 50)
    got = conv.dot_general_bf16(x3, jnp.asarray(w), (((2,), (0,)), ((), ())))
    _close(got[0], x64 @ w64, 1e-6)
    with pytest.raises(ValueError, match="Dense contraction"):
        conv.dot_general_bf16(jnp.asarray(w), jnp.asarray(x), (((0,), (1,)), ((), ())))


# bfloat16 keeps 8 significant bits: inputs, weights and each layer's output are rounded by up to
# 2**-9 relative, and a 3x3xC sum of such products (signs random) keeps an error of that order
# relative to the output's scale. 2e-2 of the scale leaves a 5-10x margin; a wrong tap or
# transposed kernel is off by O(1).
BF16_RTOL = 2e-2
BF16_GRAD_COSINE = 0.99


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("side,c_in,c_out,layer", LAYERS)
def test_bf16_layer_close_to_float32(impl, side, c_in, c_out, layer):
    x, kernel, bias = _data(6, side, c_in, c_out)
    fast = jax.jit(lambda x, k, b: conv.conv_pool_relu(x.astype(jnp.bfloat16), k, b, impl, layer))
    out = fast(x, kernel, bias)
    assert out.dtype == jnp.bfloat16
    _close(out.astype(jnp.float32), _reference(x, kernel, bias), BF16_RTOL)
    got = _grads(lambda x, k, b: fast(x, k, b).astype(jnp.float32), x, kernel, bias)
    want = _grads(_reference, x, kernel, bias)
    for a, b in zip(got[1:], want[1:], strict=True):  # parameter gradients stay float32
        assert a.dtype == jnp.float32
        # Not element-wise: where two pool candidates lie within bfloat16 rounding of each other
        # the gradient goes to the other one (~1% of windows), moving single entries by up to
        # ~10% of the scale. As a direction the gradient must agree.
        a, b = np.ravel(a), np.ravel(b)
        assert np.dot(a, b) >= BF16_GRAD_COSINE * np.linalg.norm(a) * np.linalg.norm(b)


def test_unknown_impl_is_refused():
    x, kernel, bias = _data(1, 8, 3, 4)
    with pytest.raises(ValueError, match="conv_impl"):
        conv.conv_pool_relu(x, kernel, bias, "winograd")


def _model(impl):
    return model_lib.PatchWiseModel(
        patch_size=28, weight_hidden=(16, 8), classifier_hidden=(8,), conv_impl=impl
    )


@pytest.fixture(scope="module")
def model_case():
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 84, 84, 3), np.uint8))
    params = _model("xla").init(jax.random.PRNGKey(0), images)["params"]
    return images, params


@pytest.mark.parametrize("impl", FAST)
def test_same_parameters_as_xla(impl, model_case):
    """Same tree, names, shapes and initial values: checkpoints move between implementations."""
    images, ref = model_case
    params = _model(impl).init(jax.random.PRNGKey(0), images)["params"]
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(ref)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("impl", FAST)
def test_model_outputs_and_gradients_match_xla(impl, model_case):
    images, params = model_case

    def loss(model, p):
        out = model.apply({"params": p}, images)
        return jnp.sum(out.logits**2) + jnp.sum(jnp.sin(out.weights))

    ref_out = _model("xla").apply({"params": params}, images)
    out = jax.jit(_model(impl).apply)({"params": params}, images)
    for got, want in zip(out, ref_out, strict=True):
        _close(got, want, 1e-5)
    want = jax.grad(lambda p: loss(_model("xla"), p))(params)
    got = jax.jit(jax.grad(lambda p: loss(_model(impl), p)))(params)
    jax.tree_util.tree_map(lambda a, b: _close(a, b, 1e-4), got, want)


def test_compiler_options_compile_and_agree():
    assert conv.compiler_options("xla") is None
    opts = conv.compiler_options("s2d")
    assert opts is None or jax.default_backend() == "cpu"
    x, kernel, bias = _data(2, 14, 12, 24)
    f = lambda x, k, b: conv.conv_pool_relu(x, k, b, "s2d")  # noqa: E731
    a = jax.jit(f, compiler_options=opts)(x, kernel, bias)
    _close(a, jax.jit(f)(x, kernel, bias), 1e-6)


POOL = "pool+remat=false+remat_chunk=5"  # an implementation with model fields changed


@pytest.fixture(scope="module")
def throughput_run(tmp_path_factory):
    """One end-to-end run of benchmarks/throughput.py on the smoke config that exercises every
    part these tests read (two implementations with model fields, the peers, the device-resident
    training, predict latency), so the benchmark's start-up and compiles are paid once."""
    out_dir = tmp_path_factory.mktemp("throughput")
    (out_dir / "input_pipeline.json").write_text(json.dumps({"machine": "x86_64"}))
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks/throughput.py"),
         "--config=" + os.path.join(ROOT, "configs/smoke.py"), "--json", "--repeats=2",
         "--steps=1", "--warmup=0", "--resident=8", f"--out={out_dir}",
         f"--impls=s2d,{POOL}", "--peers",
         "--peer_variants=torch,torch+cl"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1]), out, out_dir


@pytest.mark.slow
def test_throughput_benchmark_smoke(throughput_run):
    """The benchmark runs end to end on the smoke config and counts FLOPs by its formula; the
    results table skips another benchmark's JSON in the same folder (gpu_check keeps both)."""
    result, out, out_dir = throughput_run
    # Smoke: 4x4 patches of 28 px, convs 3->12->24->48, weight MLP 432->32->16->8->1.
    convs = 2 * 9 * (28**2 * 3 * 12 + 14**2 * 12 * 24 + 7**2 * 24 * 48)
    mlp = 2 * (432 * 32 + 32 * 16 + 16 * 8 + 8 * 1)
    assert result["gflop_per_image"]["infer"] == pytest.approx(16 * (convs + mlp) / 1e9)
    for key in ("train_img_per_s", "infer_img_per_s", "train_gflops", "infer_gflops"):
        assert result[key] > 0
    assert result["batch"] == 4 and result["dtype"] == "float32" and result["devices"] >= 1
    assert result["predict_latency"]["total_s"] > 0
    # Training fed by config.data.resident's gather (jaxcerv.training.resident) from 8 images.
    assert result["resident_images"] == 8 and result["resident_train_img_per_s"] > 0
    # One table row per compared implementation of this run's JSON; none from input_pipeline.
    table = (out_dir / "results.md").read_text()
    assert table.count("| float32 | 4 |") == len(result["compare"])
    assert "compiled s2d: train" in out.stderr  # progress, should a time limit cut the run


def test_throughput_benchmark_variants_set_model_fields(throughput_run):
    rows = throughput_run[0]["compare"]
    assert [r["model"] for r in rows if "model" in r] == [
        {"conv_impl": "s2d", "remat": True, "remat_chunk": 36, "dtype": "float32"},
        {"conv_impl": "pool", "remat": False, "remat_chunk": 5, "dtype": "float32"},
    ]


# ml_collections' DEFINE_config_file loads the default config with the deprecated load_module().
@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
def test_profile_ops_counts_each_xla_op_once_per_step(tmp_path):
    """--profile's summary: the compiled program's own ops (not Python frames or PjRt calls),
    each called once per step of a loop-free program, their shares summing to one."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "throughput", os.path.join(ROOT, "benchmarks/throughput.py"))
    throughput = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(throughput)
    f = jax.jit(lambda x: jnp.tanh(x @ x).sum(axis=0))
    x = jnp.ones((256, 256))
    hlo = f.lower(x).compile().as_text()
    prof = throughput.profile_ops(lambda: f(x), 3, str(tmp_path))
    assert prof["steps"] == 3 and prof["source"] == "host" and os.path.exists(prof["trace"])
    assert prof["top"] and all(op["op"] in hlo for op in prof["top"])
    assert [op["calls_per_step"] for op in prof["top"]] == [1.0] * len(prof["top"])
    assert sum(op["share"] for op in prof["top"]) == pytest.approx(1.0)
    assert 0 < prof["busy_ms_per_step"] <= prof["op_ms_per_step"] + 1e-9
    # Coverage by hand: [0, 2] and [1, 3] overlap (3 ms busy), [5, 6] adds 1; 2 ms uncovered.
    assert throughput._coverage([(5, 6), (0, 2), (1, 3)], 2) == {
        "busy_ms_per_step": 2.0, "untraced_ms_per_step": 1.0}


def test_throughput_peers_time_ours_against_torch_or_say_why_not(throughput_run):
    """--peers times the PyTorch peer interleaved with ours and gives each of our rows its ratio
    to the best peer; without PyTorch it says so and times ours alone."""
    result, out, out_dir = throughput_run
    rows = result["compare"]
    try:
        import torch  # noqa: F401
    except ImportError:
        assert "PyTorch is not installed" in out.stdout
        assert [r["conv_impl"] for r in rows] == ["s2d", POOL] and "best_peer" not in result
        return
    assert [r["conv_impl"] for r in rows] == ["s2d", POOL, "torch", "torch+cl"]
    for w in ("train", "infer"):
        best = max(rows[2:], key=lambda r: r[f"{w}_img_per_s"])
        assert result["best_peer"][w]["impl"] == best["conv_impl"]
        for r in rows[:2]:
            assert r[f"{w}_vs_best_peer"] == pytest.approx(
                r[f"{w}_img_per_s"] / best[f"{w}_img_per_s"])
    assert "torch+cl" in (out_dir / "results.md").read_text()


def test_profile_parts_times_every_part(tmp_path):
    """The per-part profile runs on the smoke config and prints one line per part, in order."""
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks/profile_parts.py"),
         "--config=" + os.path.join(ROOT, "configs/smoke.py"), "--repeats=1", "--batch=2"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )
    lines = [ln.split(" ms")[0] for ln in out.stdout.splitlines() if ln.startswith("  ")]
    names = ["patchify + normalise", "conv 1 (3->12)", "conv 2 (12->24)", "conv 3 (24->48)",
             "weight MLP"]
    assert [ln.rsplit(None, 1)[0].strip() for ln in lines] == names


def test_conv_layers_benchmark_times_every_layer(tmp_path):
    """The per-layer benchmark prints one row per layer and patch count, FLOPs by hand."""
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks/conv_layers.py"), "--patches", "300",
         "--repeats", "1"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )
    rows = [ln.split() for ln in out.stdout.splitlines() if ln.strip().startswith("300 ")]
    assert [r[2].rstrip(",:") for r in rows] == ["1", "2", "3"]
    # GFLOP (the column before the XLA cell) of a VALID conv: 2 * patches * out^2 * k^2 * C * F.
    expect = [2 * 300 * 14**2 * 4 * 12 * 48, 2 * 300 * 7**2 * 4 * 48 * 96,
              2 * 300 * 7**2 * 9 * 24 * 48]
    got = [float(r[r.index("xla") - 1]) for r in rows]
    assert got == pytest.approx([e / 1e9 for e in expect], abs=6e-4)

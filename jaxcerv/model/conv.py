"""Fast implementations of the patch encoder's layer: 3x3 conv -> 2x2 max-pool -> bias -> ReLU.

Why this exists: on XLA:CPU (jax 0.10) the straightforward ``nn.Conv`` + ``nn.max_pool`` layer is
slow at the paper's scale (7056 patches of 28x28 px per batch of 4), training most of all. What
costs, and the cheaper equivalent used here (measurements: benchmarks/README.md):

* XLA:CPU hands convolutions to YNNPACK by default, 3-5x slower than XLA's own (Eigen)
  convolutions at 3-48 channels, forward and backward. ``compiler_options`` switches them back;
  it is a per-jit option, so it must be passed where the steps are jitted.
* ``nn.max_pool``'s gradient is a select-and-scatter, which XLA:CPU lowers to an arg-max
  reduce-window plus a scatter. ``max_pool2`` is a reshape + max whose custom gradient is one
  element-wise select (first maximum of each window, as select-and-scatter picks). Pooling before
  the bias and the ReLU gives the same values (both are monotone, per channel) on 1/4 the elements.
* The first convolution has 3 input channels, too few for any convolution kernel to be fast. On a
  space-to-depth view of the padded patch (2x2 pixel blocks -> 12 channels) the 3x3 conv followed
  by the 2x2 pool is a 2x2 VALID conv with 48 = 4 pool positions x 12 outputs, then a max over the
  4 positions (``conv3x3_pool_s2d``): 1.8x the arithmetic, but 3x faster, and its kernel gradient
  is one im2col matrix product (``conv_valid``), faster there than XLA's.
* The model runs the layers inside a loop over patch chunks (``model.remat``). Inside a loop body
  XLA:CPU keeps the backward convolutions in their transposed form and runs them without Eigen,
  7-50x slower; ``conv_valid``'s gradients are written as forward NHWC convolutions instead.

* ``s2d2`` also computes the second layer (12 -> 24 at 14x14) in the space-to-depth form: 2.2x
  faster than the direct layer in isolation on an AVX-512 CPU, within noise of ``s2d`` in the
  whole step (benchmarks/README.md).
* bfloat16 (``dtype``): XLA:CPU reaches the AVX512-BF16 units only through a dot with bfloat16
  operands and a float32 result; its bfloat16 convolutions are slower than its float32 ones. So
  the Dense layers use ``matmul_bf16`` and the space-to-depth layers after the first
  ``conv_valid_dots``, both with gradients of the same form, and on CPU every other layer
  computes in float32 (``conv_pool_relu``).

Tried and dropped (slower): im2col kernel gradients for the 12- and 24-channel layers (the im2col
concatenation costs more than XLA's backward convolution once that is Eigen's), im2col forward
convolutions, and a channel-major layout. Parameters are ``nn.Conv``'s ``kernel`` (3, 3, C, F) and
``bias`` (F,), so every implementation reads the same checkpoints.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

IMPLS = ("xla", "pool", "s2d", "s2d2")
# How many leading layers each implementation computes in the space-to-depth form.
S2D_LAYERS = {"pool": 0, "s2d": 1, "s2d2": 2}
_DN = ("NHWC", "HWIO", "NHWC")
xavier = nn.initializers.xavier_uniform()


def _conv_valid(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_DN)


def _im2col(x: jax.Array, kh: int, kw: int) -> jax.Array:
    """(N, H, W, C) -> (N*(H-kh+1)*(W-kw+1), kh*kw*C), columns in HWIO order (row, column,
    channel)."""
    n, h, w, c = x.shape
    oh, ow = h - kh + 1, w - kw + 1
    cols = jnp.concatenate(
        [x[:, i : i + oh, j : j + ow, :] for i in range(kh) for j in range(kw)], axis=-1
    )
    return cols.reshape(n * oh * ow, kh * kw * c)


def _kernel_grad(x: jax.Array, dy: jax.Array) -> jax.Array:
    """d loss / d kernel of a VALID conv, as a forward NHWC convolution of transposed operands:
    the patch batch becomes the contracted feature dimension, the input channels the batch."""
    rhs = dy.transpose(1, 2, 0, 3)  # (OH, OW, N, F)
    return _conv_valid(x.transpose(3, 1, 2, 0), rhs).transpose(1, 2, 0, 3)


def _input_grad(dy: jax.Array, kernel: jax.Array) -> jax.Array:
    """d loss / d x of a VALID conv: the padded cotangent convolved with the flipped kernel."""
    kh, kw = kernel.shape[:2]
    dyp = jnp.pad(dy, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
    return _conv_valid(dyp, kernel[::-1, ::-1].transpose(0, 1, 3, 2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_valid(x: jax.Array, kernel: jax.Array, im2col: bool = False) -> jax.Array:
    """VALID, stride-1 NHWC convolution whose gradients are forward convolutions (or, with
    ``im2col``, a kernel gradient that is one matrix product ``cols^T @ dy``, faster for the
    12-channel space-to-depth layer). XLA's own backward convolutions are slow inside a loop
    (the chunked encoder): 13 s vs 0.2 s for a 12->24 kernel gradient over 16 chunks."""
    return _conv_valid(x, kernel)


def _conv_valid_fwd(x: jax.Array, kernel: jax.Array, im2col: bool) -> tuple[jax.Array, tuple]:
    return _conv_valid(x, kernel), (x, kernel)


def _conv_valid_bwd(im2col: bool, res: tuple, dy: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = res
    if im2col:
        cols = _im2col(x, *kernel.shape[:2])
        dk = cols.T @ dy.reshape(-1, dy.shape[-1])
    else:
        dk = _kernel_grad(x, dy)
    # The input gradient is unused (and removed by XLA) for the first layer, whose input is the
    # image.
    return _input_grad(dy, kernel), dk.reshape(kernel.shape).astype(kernel.dtype)


conv_valid.defvjp(_conv_valid_fwd, _conv_valid_bwd)


def _first_max_mask(parts: list[jax.Array], top: jax.Array) -> list[jax.Array]:
    """One-hot of the first of ``parts`` equal to ``top``: where a window ties, only its first
    element gets the gradient, as with XLA's select-and-scatter (``nn.max_pool``)."""
    taken = jnp.zeros(top.shape, bool)
    masks = []
    for part in parts:
        hit = (part == top) & ~taken
        taken = taken | hit
        masks.append(hit)
    return masks


@jax.custom_vjp
def _max4(y: jax.Array) -> jax.Array:
    """Max over axis -2 of size 4 (the pool window), routing the gradient to the first maximum."""
    return jnp.max(y, axis=-2)


def _max4_fwd(y: jax.Array) -> tuple[jax.Array, tuple]:
    top = jnp.max(y, axis=-2)
    return top, (y, top)


def _max4_bwd(res: tuple, g: jax.Array) -> tuple[jax.Array]:
    y, top = res
    parts = [y[..., k, :] for k in range(y.shape[-2])]
    masks = _first_max_mask(parts, top)
    return (jnp.stack([jnp.where(m, g, 0).astype(y.dtype) for m in masks], axis=-2),)


_max4.defvjp(_max4_fwd, _max4_bwd)


@jax.custom_vjp
def max_pool2(y: jax.Array) -> jax.Array:
    """2x2/stride-2 max-pool (VALID: an odd last row/column is dropped) as reshape + max; the
    gradient goes to the first maximum of each window in row-major order, like ``nn.max_pool``."""
    n, h, w, c = y.shape
    h2, w2 = h // 2, w // 2
    return y[:, : 2 * h2, : 2 * w2].reshape(n, h2, 2, w2, 2, c).max(axis=(2, 4))


def _max_pool2_fwd(y: jax.Array) -> tuple[jax.Array, tuple]:
    top = max_pool2(y)
    return top, (y, top)


def _max_pool2_bwd(res: tuple, g: jax.Array) -> tuple[jax.Array]:
    y, top = res
    n, h, w, c = y.shape
    h2, w2 = h // 2, w // 2
    y6 = y[:, : 2 * h2, : 2 * w2].reshape(n, h2, 2, w2, 2, c)
    parts = [y6[:, :, a, :, b, :] for a in range(2) for b in range(2)]
    m = [jnp.where(k, g, 0).astype(y.dtype) for k in _first_max_mask(parts, top)]
    rows = [jnp.stack([m[2 * a], m[2 * a + 1]], axis=3) for a in range(2)]  # (n, h2, w2, 2, c)
    dy = jnp.stack(rows, axis=2).reshape(n, 2 * h2, 2 * w2, c)
    return (jnp.pad(dy, ((0, 0), (0, h - 2 * h2), (0, w - 2 * w2), (0, 0))),)


max_pool2.defvjp(_max_pool2_fwd, _max_pool2_bwd)


def _s2d_selector() -> np.ndarray:
    """0/1 tensor S[I, J, a, b, p, q, u, v] = 1 where 3x3 tap (u, v) maps to 2x2 block tap (I, J),
    in-block offset (a, b) for pool position (p, q): u = 2I + a - p, v = 2J + b - q."""
    s = np.zeros((2, 2, 2, 2, 2, 2, 3, 3), np.float32)
    for i, j, a, b, p, q in np.ndindex(2, 2, 2, 2, 2, 2):
        u, v = 2 * i + a - p, 2 * j + b - q
        if 0 <= u <= 2 and 0 <= v <= 2:
            s[i, j, a, b, p, q, u, v] = 1.0
    return s


_S2D = _s2d_selector()


def conv3x3_pool_s2d(x: jax.Array, kernel: jax.Array, im2col: bool = True,
                     dots: bool = False) -> jax.Array:
    """max_pool2(3x3 SAME conv) of an even-sized input, as a 2x2 conv on its space-to-depth view
    (``dots``: by ``conv_valid_dots``, in bfloat16)."""
    n, s, _, c = x.shape
    f = kernel.shape[-1]
    m = s // 2 + 1
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    xs = xp.reshape(n, m, 2, m, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, m, m, 4 * c)
    big = jnp.einsum("ijabpquv,uvco->ijabcpqo", _S2D.astype(kernel.dtype), kernel)
    big = big.reshape(2, 2, 4 * c, 4 * f)
    # (n, s/2, s/2, 4 pool positions * f)
    y = conv_valid_dots(xs, big) if dots else conv_valid(xs, big, im2col)
    return _max4(y.reshape(n, s // 2, s // 2, 4, f))


def _shifted_sum(z: jax.Array, kh: int, kw: int) -> jax.Array:
    """(N, H, W, kh*kw, F) per-tap products -> (N, H-kh+1, W-kw+1, F) VALID conv output."""
    oh, ow = z.shape[1] - kh + 1, z.shape[2] - kw + 1
    taps = [z[:, i : i + oh, j : j + ow, i * kw + j] for i in range(kh) for j in range(kw)]
    return functools.reduce(jnp.add, taps)


def _shifted_stack(dy: jax.Array, kh: int, kw: int) -> jax.Array:
    """(N, OH, OW, F) -> (N, OH+kh-1, OW+kw-1, kh*kw, F): tap (i, j) holds dy moved by (i, j)."""
    pads = [
        jnp.pad(dy, ((0, 0), (i, kh - 1 - i), (j, kw - 1 - j), (0, 0)))
        for i in range(kh) for j in range(kw)
    ]
    return jnp.stack(pads, axis=-2)


def _bdot(a: jax.Array, b: jax.Array) -> jax.Array:
    """bfloat16 operands, float32 accumulation and result: the form XLA:CPU runs on AVX512-BF16
    (bfloat16 in and out is upcast to a float32 product instead; shared/notes/probes.md)."""
    bf = jnp.bfloat16
    return jnp.dot(a.astype(bf), b.astype(bf), preferred_element_type=jnp.float32)


@jax.custom_vjp
def conv_valid_dots(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """VALID stride-1 NHWC convolution as one bfloat16 matrix product and a shifted sum:
    every input pixel times every tap's (C, F) matrix, ``(N*H*W, C) @ (C, kh*kw*F)``, then tap
    (i, j)'s products moved by (i, j) and added. No im2col copy (XLA's channel concatenation is
    slow); the arithmetic grows by H*W / (OH*OW) (1.3x for the 8x8 -> 7x7 space-to-depth layer).
    The gradients are two more such products on the shifted stack of the cotangent. float32
    result; its cotangent is rounded to bfloat16, as mixed-precision backward passes do."""
    return _conv_valid_dots_fwd(x, kernel)[0]


def _conv_valid_dots_fwd(x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, tuple]:
    kh, kw, c, f = kernel.shape
    kcat = kernel.transpose(2, 0, 1, 3).reshape(c, kh * kw * f)
    z = _bdot(x.reshape(-1, c), kcat).reshape(*x.shape[:3], kh * kw, f)
    return _shifted_sum(z, kh, kw), (x, kernel)


def _conv_valid_dots_bwd(res: tuple, dy: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = res
    kh, kw, c, f = kernel.shape
    kcat = kernel.transpose(2, 0, 1, 3).reshape(c, kh * kw * f)
    stack = _shifted_stack(dy.astype(jnp.bfloat16), kh, kw).reshape(-1, kh * kw * f)
    x2 = x.reshape(-1, c)
    dk = _bdot(x2.T, stack).reshape(c, kh, kw, f).transpose(1, 2, 0, 3)
    dx = _bdot(stack, kcat.T).reshape(x.shape)
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


conv_valid_dots.defvjp(_conv_valid_dots_fwd, _conv_valid_dots_bwd)


@jax.custom_vjp
def matmul_bf16(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` (x: (M, K), w: (K, N)) with bfloat16 operands and float32 accumulation, forward
    and backward (the cotangent rounded to bfloat16): JAX's own transpose of a mixed-precision dot
    multiplies a float32 cotangent, i.e. upcasts, and loses the bfloat16 speed."""
    return _bdot(x, w)


def _matmul_bf16_fwd(x: jax.Array, w: jax.Array) -> tuple[jax.Array, tuple]:
    return _bdot(x, w), (x, w)


def _matmul_bf16_bwd(res: tuple, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, w = res
    return _bdot(g, w.T).astype(x.dtype), _bdot(x.T, g).astype(w.dtype)


matmul_bf16.defvjp(_matmul_bf16_fwd, _matmul_bf16_bwd)


def dot_general_bf16(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any,
                     precision: Any = None, preferred_element_type: Any = None) -> jax.Array:
    """``nn.Dense(dot_general=...)``: its (..., K) x (K, N) contraction by ``matmul_bf16``."""
    del precision, preferred_element_type
    (lc, rc), (lb, rb) = dimension_numbers
    if tuple(lc) != (lhs.ndim - 1,) or tuple(rc) != (0,) or lb or rb or rhs.ndim != 2:
        raise ValueError(f"dot_general_bf16 takes a Dense contraction, not {dimension_numbers}")
    out = matmul_bf16(lhs.reshape(-1, lhs.shape[-1]), rhs)
    return out.reshape(*lhs.shape[:-1], rhs.shape[-1])


def conv_pool_relu(
    x: jax.Array, kernel: jax.Array, bias: jax.Array, impl: str, layer: int = 1
) -> jax.Array:
    """relu(max_pool2(conv3x3_same(x, kernel) + bias)) by implementation ``impl`` (not "xla") for
    encoder layer ``layer`` (0 = the first), in ``x``'s dtype.

    bfloat16 on CPU: the space-to-depth layers after the first run as ``conv_valid_dots``, on the
    bfloat16 units; every other layer computes in float32 (Eigen's bfloat16 convolutions are
    slower than its float32 ones, and the first layer's 12 input channels are too few for a fast
    product). Elsewhere (GPU, TPU) every layer computes in bfloat16."""
    if impl not in IMPLS[1:]:
        raise ValueError(f"unknown conv_impl {impl!r}: use one of {IMPLS}")
    dtype = x.dtype
    s2d = layer < S2D_LAYERS[impl] and x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0
    dots = s2d and layer > 0 and dtype == jnp.bfloat16 and jax.default_backend() == "cpu"
    if dtype == jnp.bfloat16 and jax.default_backend() == "cpu" and not dots:
        x, kernel, bias = (a.astype(jnp.float32) for a in (x, kernel, bias))
    if s2d:
        y = conv3x3_pool_s2d(x, kernel, im2col=layer == 0, dots=dots)
    else:
        y = max_pool2(conv_valid(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), kernel))
    return nn.relu(y + bias.astype(y.dtype)).astype(dtype)


class ConvPoolReLU(nn.Module):
    """One encoder layer with ``nn.Conv``'s parameter names, shapes and initialisers."""

    features: int
    impl: str = "s2d"
    layer: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", xavier, (3, 3, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
        return conv_pool_relu(x, kernel, bias, self.impl, self.layer)


# XLA:CPU (jax 0.10) hands convolutions to YNNPACK by default, 3-5x slower than XLA's own (Eigen)
# convolutions at these channel counts; matrix products stay with YNNPACK.
_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def compiler_options(impl: str) -> dict[str, str] | None:
    """``jax.jit(..., compiler_options=...)`` for a step running this model with ``impl``: the
    fast implementations also pick the faster CPU convolution; "xla" (the reference) and non-CPU
    backends keep XLA's defaults."""
    if impl == "xla" or jax.default_backend() != "cpu":
        return None
    return dict(_CPU_OPTIONS)

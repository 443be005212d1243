"""The patch-wise model (paper Eq. 1, 4 and Fig. 2) in Flax linen.

image -> patchify (a reshape on device) -> patch CNN g(x_j), one encoder for all patches (the
patch axis folded into the convolution batch, as vmap would lower it) -> patch weight
a_j = sigmoid(MLP(g(x_j))) -> aggregation of a_j * g(x_j) -> classifier logit.
The weights, arranged on the patch grid, are the heatmap.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging

from jaxcerv import conv

# The paper Xavier-initialises every layer.
xavier = nn.initializers.xavier_uniform()


class ModelOutput(NamedTuple):
    logits: jax.Array  # (B,) classifier logit, float32
    weights: jax.Array  # (B, H, W) patch weights a_j in (0, 1), float32
    features: jax.Array  # (B, F) aggregated image feature f(I), for t-SNE


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """(B, H*P, W*P, C) -> (B, H*W, P, P, C), row-major over the patch grid."""
    b, height, width, c = images.shape
    rows, cols = height // patch_size, width // patch_size
    if rows * patch_size != height or cols * patch_size != width:
        raise ValueError(
            f"image of {height}x{width} px is not a whole number of {patch_size}-px patches"
        )
    x = images.reshape(b, rows, patch_size, cols, patch_size, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, rows * cols, patch_size, patch_size, c)


def normalise_pixels(x: jax.Array, dtype: Any) -> jax.Array:
    """0..255 pixels to roughly zero mean, unit variance, in the compute dtype."""
    return (x.astype(dtype) - 127.5) / 64.0


class PatchEncoder(nn.Module):
    """g(x | w, theta): 3x3 convs, each ReLU + 2x2 max-pool, flattened; x is a batch of patches.

    ``conv_impl`` picks how the layers are computed (jaxcerv/conv.py): "xla" is the straightforward
    ``nn.Conv`` + ``nn.max_pool``; the others give the same values with the same parameters, faster.
    """

    features: Sequence[int] = (12, 24, 48)
    dtype: Any = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, f in enumerate(self.features):
            if self.conv_impl == "xla":
                x = nn.Conv(f, (3, 3), padding="SAME", kernel_init=xavier, dtype=self.dtype)(x)
                x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
            else:
                x = conv.ConvPoolReLU(
                    f, self.conv_impl, layer=i, dtype=self.dtype, name=f"Conv_{i}"
                )(x)
        return x.reshape(x.shape[0], -1)


class MLP(nn.Module):
    """ReLU hidden layers, then ``out`` linear units. In bfloat16 every product takes bfloat16
    operands and accumulates in float32, backward too (``conv.matmul_bf16``): the form that runs on
    AVX512-BF16 units and tensor cores."""

    hidden: Sequence[int]
    out: int
    dropout: float = 0.0
    dtype: Any = jnp.float32
    out_bias: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        bf16 = jnp.dtype(self.dtype) == jnp.bfloat16
        dense = functools.partial(
            nn.Dense, kernel_init=xavier, dtype=self.dtype,
            dot_general=conv.dot_general_bf16 if bf16 else None,
        )
        for width in self.hidden:
            x = nn.relu(dense(width)(x)).astype(self.dtype)
            if self.dropout > 0:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return dense(self.out, bias_init=nn.initializers.constant(self.out_bias))(x)


def aggregate(weighted: jax.Array, how: str) -> jax.Array:
    """Eq. 4's aggregation of a_j * g(x_j) over the patch axis (B, K, F) -> (B, F')."""
    if how == "mean":
        return jnp.mean(weighted, axis=1)
    if how == "sum":
        return jnp.sum(weighted, axis=1)
    if how == "concat":
        return weighted.reshape(weighted.shape[0], -1)
    raise ValueError(f"unknown aggregation {how!r}: use 'mean', 'sum' or 'concat'")


class PatchWiseModel(nn.Module):
    """The whole network; ``__call__`` takes uint8 or float images (B, S, S, 3)."""

    patch_size: int = 28
    conv_features: Sequence[int] = (12, 24, 48)
    weight_hidden: Sequence[int] = (800, 512, 128)
    classifier_hidden: Sequence[int] = (128, 32)
    aggregation: str = "mean"
    dropout: float = 0.0
    feature_norm: bool = True
    weight_bias_init: float = 0.0
    dtype: Any = jnp.float32
    remat: bool = False
    remat_chunk: int = 36  # patches of each image per chunk
    conv_impl: str = "xla"

    def _per_patch_rematerialised(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Encoder and weight MLP on (B, K, P, P, C) raw patches, ``remat_chunk`` patches of every
        image at a time, each chunk under ``jax.checkpoint``.

        Memory: the backward pass recomputes one chunk's activations at a time instead of keeping
        the whole batch's. Speed on CPU: one layer over all B*K patches streams every activation
        through main memory (the first layer's output alone is 265 MB at paper scale, batch 4),
        while a chunk's stay in cache: 1.1-1.2x training and 1.5x inference at paper scale
        (benchmarks/README.md). Chunks run along the patch axis, so the batch axis, which is
        sharded over devices, stays whole in every chunk. A pure function of the two modules'
        parameters: the parameter tree is the same as without remat."""
        params = self.variables["params"]
        encoder = PatchEncoder(self.conv_features, self.dtype, self.conv_impl)
        mlp = MLP(self.weight_hidden, 1, dtype=self.dtype, out_bias=self.weight_bias_init)

        def per_patch(chunk: jax.Array) -> tuple[jax.Array, jax.Array]:
            b, k = chunk.shape[:2]
            chunk = normalise_pixels(chunk.reshape(b * k, *chunk.shape[2:]), self.dtype)
            g = encoder.apply({"params": params["encoder"]}, chunk)
            return g.reshape(b, k, -1), mlp.apply({"params": params["weight_mlp"]}, g).reshape(
                b, k, 1
            )

        return map_patch_chunks(per_patch, x, self.remat_chunk)

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> ModelOutput:
        rows, cols = images.shape[1] // self.patch_size, images.shape[2] // self.patch_size
        x = patchify(images, self.patch_size)  # uint8 images move as uint8: a quarter of the bytes
        # One set of encoder parameters shared by all patches: fold the patch axis into the batch so
        # that each layer is one convolution over all B*K patches.
        b, k = x.shape[:2]
        if self.remat and not self.is_initializing():
            g, logit_a = self._per_patch_rematerialised(x)
        else:
            patches = normalise_pixels(x.reshape(b * k, *x.shape[2:]), self.dtype)
            encoder = PatchEncoder(self.conv_features, self.dtype, self.conv_impl, name="encoder")
            g = encoder(patches).reshape(b, k, -1)  # (B, K, F)
            logit_a = MLP(
                self.weight_hidden,
                1,
                dtype=self.dtype,
                out_bias=self.weight_bias_init,
                name="weight_mlp",
            )(g)
        a = nn.sigmoid(logit_a.astype(jnp.float32))  # (B, K, 1)
        f = aggregate(a.astype(self.dtype) * g, self.aggregation)
        if self.feature_norm:
            # Not in the paper: under Xavier init the average of ~1e3 weighted patch features is
            # ~1e-2 in scale and nearly constant across images, and the classifier barely moves.
            f = nn.LayerNorm(dtype=self.dtype, name="feature_norm")(f)
        logits = MLP(self.classifier_hidden, 1, self.dropout, dtype=self.dtype, name="classifier")(
            f, train
        )
        return ModelOutput(
            logits=logits[:, 0].astype(jnp.float32),
            weights=a[..., 0].reshape(-1, rows, cols),
            features=f.astype(jnp.float32),
        )


def map_patch_chunks(fn: Callable[[jax.Array], Any], x: jax.Array, size: int) -> Any:
    """``fn`` over chunks of ``size`` patches of every image of ``x`` (B, K, ...), one chunk at a
    time (``lax.map``), each under ``jax.checkpoint``. ``fn`` maps (B, size, ...) to a pytree of
    (B, size, ...) arrays; the result has (B, K, ...) leaves. The last chunk is padded with zero
    patches whose outputs are dropped."""
    b, k = x.shape[:2]
    size = min(size, k)
    chunks = -(-k // size)
    x = jnp.pad(x, ((0, 0), (0, chunks * size - k)) + ((0, 0),) * (x.ndim - 2))
    out = jax.lax.map(jax.checkpoint(fn), x.reshape(b, chunks, size, *x.shape[2:]).swapaxes(0, 1))
    return jax.tree.map(
        lambda y: y.swapaxes(0, 1).reshape(b, chunks * size, *y.shape[3:])[:, :k], out
    )


def from_config(config: Any) -> PatchWiseModel:
    """Build the model from ``config.model`` (and the shared ``config.patch_size``)."""
    m = config.model
    if m.remat and m.conv_impl == "xla" and jax.default_backend() == "cpu":
        logging.warning(
            "model.conv_impl='xla' with model.remat=True trains about 7x slower on CPU (XLA runs "
            "its own backward convolutions slowly inside the chunk loop): set model.remat=False "
            "or use conv_impl='s2d'"
        )
    return PatchWiseModel(
        patch_size=config.patch_size,
        conv_features=tuple(m.conv_features),
        weight_hidden=tuple(m.weight_hidden),
        classifier_hidden=tuple(m.classifier_hidden),
        aggregation=m.aggregation,
        dropout=m.dropout,
        feature_norm=m.feature_norm,
        weight_bias_init=m.weight_bias_init,
        dtype=jnp.dtype(m.dtype),
        remat=m.remat,
        remat_chunk=m.remat_chunk,
        conv_impl=m.conv_impl,
    )

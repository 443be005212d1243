"""The patch-wise model (paper Eq. 1, 4 and Fig. 2) and the baselines of Table 1, in Flax linen.

image -> patchify (a reshape on device) -> patch CNN g(x_j), one encoder for all patches (the
patch axis folded into the convolution batch, as vmap would lower it) -> patch weight
a_j = sigmoid(MLP(g(x_j))) -> aggregation of a_j * g(x_j) -> classifier logit.
The weights, arranged on the patch grid, are the heatmap.

Baselines (``config.model.family``, ``FAMILIES``): whole-image CNNs on the image downsampled to
their input size (LeNet, AlexNet/CaffeNet, VGG16 with ``freeze_blocks``, an Inception-style net),
optionally centre-cropped first (``data.center_crop``), which have no patch weights
(``ModelOutput.weights`` is None: no spatial loss, no heatmap metrics); and gated-attention MIL
(ABMIL, Ilse et al. 2018) on our patch encoder, whose softmax attention is its heatmap.

``model.init_from``: a local ``.npz`` of a flat ``{"a/b/kernel": array}`` mapping (parameter
paths joined by "/", as ``flatten_params`` writes them) loaded over the fresh parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

from jaxcerv.model import conv

# The paper Xavier-initialises every layer.
xavier = nn.initializers.xavier_uniform()


class ModelOutput(NamedTuple):
    logits: jax.Array  # (B,) classifier logit, float32
    weights: jax.Array | None  # (B, H, W) patch weights a_j in (0, 1); None: whole-image model
    features: jax.Array  # (B, F) aggregated image feature f(I), for t-SNE
    # (B, H, W) the weights before their sigmoid / softmax (what `regulator.normalise="logits"`
    # normalises); None: whole-image model
    weight_logits: jax.Array | None = None


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

    ``conv_impl`` picks how the layers are computed (jaxcerv/model/conv.py): "xla" is the
    straightforward
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


AGGREGATIONS = ("mean", "sum", "weighted_mean", "concat")
# regulator.reaches: what the spatial loss trains ("encoder": the paper; see PatchWiseModel).
REACHES = ("encoder", "weight_mlp")


def aggregate(a: jax.Array, g: jax.Array, how: str) -> jax.Array:
    """Eq. 4's aggregation of a_j * g(x_j) over the patch axis: a (B, K, 1), g (B, K, F) -> (B, F').

    "weighted_mean" divides by the image's total weight, sum_j a_j g_j / sum_j a_j: the image
    feature is then a convex combination of its patches' features, the same whatever the common
    level of the weights, so a map that singles out a few patches makes the image feature those
    patches' features instead of a small multiple of the image's average patch."""
    weighted = a * g
    if how == "mean":
        return jnp.mean(weighted, axis=1)
    if how == "sum":
        return jnp.sum(weighted, axis=1)
    if how == "weighted_mean":
        return jnp.sum(weighted, axis=1) / jnp.sum(a, axis=1)
    if how == "concat":
        return weighted.reshape(weighted.shape[0], -1)
    raise ValueError(f"unknown aggregation {how!r}: use one of {AGGREGATIONS}")


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
    # False: in training the weights the model returns (what the spatial loss reads) carry their
    # gradient to the weight MLP only (``params_only_copy``), so the spatial loss trains the
    # weight MLP and the encoder learns from the classification loss alone. Same values either
    # way.
    spatial_into_encoder: bool = True
    dtype: Any = jnp.float32
    remat: bool = False
    remat_chunk: int = 36  # patches of each image per chunk
    conv_impl: str = "xla"

    def _per_patch_rematerialised(
        self, x: jax.Array, split: bool
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Encoder and weight MLP on (B, K, P, P, C) raw patches, ``remat_chunk`` patches of every
        image at a time, each chunk under ``jax.checkpoint``.

        Memory: the backward pass recomputes one chunk's activations at a time instead of keeping
        the whole batch's. Speed on CPU: one layer over all B*K patches streams every activation
        through main memory (the first layer's output alone is 265 MB at paper scale, batch 4),
        while a chunk's stay in cache: 1.1-1.2x training and 1.5x inference at paper scale
        (benchmarks/README.md). Chunks run along the patch axis, so the batch axis, which is
        sharded over devices, stays whole in every chunk. A pure function of the two modules'
        parameters: the parameter tree is the same as without remat.

        Returns the patch features, the weight logits and (``split``) their copy whose gradient
        reaches the weight MLP only (else the same logits again)."""
        params = self.variables["params"]
        encoder = PatchEncoder(self.conv_features, self.dtype, self.conv_impl)

        def per_patch(chunk: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
            b, k = chunk.shape[:2]
            chunk = normalise_pixels(chunk.reshape(b * k, *chunk.shape[2:]), self.dtype)
            g = encoder.apply({"params": params["encoder"]}, chunk)
            logit, logit_out = self._weight_logits(params["weight_mlp"], g, split)
            return g.reshape(b, k, -1), logit.reshape(b, k, 1), logit_out.reshape(b, k, 1)

        return map_patch_chunks(per_patch, x, self.remat_chunk)

    def _weight_logits(
        self, params: Any, g: jax.Array, split: bool
    ) -> tuple[jax.Array, jax.Array]:
        """The weight MLP on ``g`` with explicit parameters, and (``split``) the same logits
        whose gradient reaches the parameters only."""
        mlp = MLP(self.weight_hidden, 1, dtype=self.dtype, out_bias=self.weight_bias_init)

        def apply(p: Any, x: jax.Array) -> jax.Array:
            return mlp.apply({"params": p}, x)

        if split:
            return params_only_copy(apply)(params, g)
        logit = apply(params, g)
        return logit, logit

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> ModelOutput:
        rows, cols = images.shape[1] // self.patch_size, images.shape[2] // self.patch_size
        x = patchify(images, self.patch_size)  # uint8 images move as uint8: a quarter of the bytes
        # One set of encoder parameters shared by all patches: fold the patch axis into the batch so
        # that each layer is one convolution over all B*K patches.
        b, k = x.shape[:2]
        weight_mlp = MLP(
            self.weight_hidden, 1, dtype=self.dtype, out_bias=self.weight_bias_init,
            name="weight_mlp",
        )
        # (evaluation: the same values, no gradient to split)
        split = train and not self.spatial_into_encoder and not self.is_initializing()
        if self.remat and not self.is_initializing():
            g, logit_a, logit_out = self._per_patch_rematerialised(x, split)
        else:
            patches = normalise_pixels(x.reshape(b * k, *x.shape[2:]), self.dtype)
            encoder = PatchEncoder(self.conv_features, self.dtype, self.conv_impl, name="encoder")
            g = encoder(patches).reshape(b, k, -1)  # (B, K, F)
            if split:
                logit_a, logit_out = self._weight_logits(
                    self.variables["params"]["weight_mlp"], g, split
                )
            else:
                logit_a = logit_out = weight_mlp(g)
        a = nn.sigmoid(logit_a.astype(jnp.float32))  # (B, K, 1)
        a_out = nn.sigmoid(logit_out.astype(jnp.float32)) if split else a
        if self.aggregation == "weighted_mean":
            # the same weighted mean, from weights rescaled to sum to 1 in log space: sum(a) is
            # 0 in float32 where every logit is below about -104, and sum(a g) / sum(a) NaN
            a = nn.softmax(jax.nn.log_sigmoid(logit_a.astype(jnp.float32)), axis=1)
        f = aggregate(a.astype(self.dtype), g, self.aggregation)
        if self.feature_norm:
            # Not in the paper: under Xavier init the average of ~1e3 weighted patch features is
            # ~1e-2 in scale and nearly constant across images, and the classifier barely moves.
            f = nn.LayerNorm(dtype=self.dtype, name="feature_norm")(f)
        logits = MLP(self.classifier_hidden, 1, self.dropout, dtype=self.dtype, name="classifier")(
            f, train
        )
        return ModelOutput(
            logits=logits[:, 0].astype(jnp.float32),
            weights=a_out[..., 0].reshape(-1, rows, cols),
            features=f.astype(jnp.float32),
            weight_logits=logit_out[..., 0].astype(jnp.float32).reshape(-1, rows, cols),
        )


def params_only_copy(
    apply_fn: Callable[[Any, jax.Array], jax.Array],
) -> Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]:
    """``(params, x) -> (y, y_copy)`` with ``y = apply_fn(params, x)`` computed once; the
    gradient that reaches ``y_copy`` flows to ``params`` only, never to ``x``.

    What ``regulator.reaches=weight_mlp`` needs: the spatial loss reads ``y_copy`` and trains the
    weight MLP without moving the encoder. The straightforward form, a second forward pass on
    ``stop_gradient(x)``, gives the same gradients and cost 7-9% of training throughput; here the
    backward pass runs the MLP's VJP twice instead (once with both cotangents for the
    parameters, once with the first alone for ``x``; XLA drops the half of each it does not
    use) and the forward pass once."""

    @jax.custom_vjp
    def both(params: Any, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        y = apply_fn(params, x)
        return y, y

    def fwd(params: Any, x: jax.Array):
        y, vjp = jax.vjp(apply_fn, params, x)
        return (y, y), vjp

    def bwd(vjp: Any, cts: tuple[jax.Array, jax.Array]) -> tuple[Any, jax.Array]:
        ct, ct_params_only = cts
        d_params, _ = vjp(ct + ct_params_only)
        _, d_x = vjp(ct)
        return d_params, d_x

    both.defvjp(fwd, bwd)
    return both


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


FAMILIES = ("patchwise", "abmil", "lenet", "alexnet", "vgg16", "inception")
WHOLE_IMAGE = ("lenet", "alexnet", "vgg16", "inception")
# The input side of each whole-image CNN as published; ``model.input_size`` overrides it.
INPUT_SIZES = {"lenet": 32, "alexnet": 227, "vgg16": 224, "inception": 299}
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))  # (channels, convs) per block


def center_crop(images: jax.Array, fraction: float) -> jax.Array:
    """Keep the centre ``fraction`` of each side (the paper's "Crop k": k of 2400 px)."""
    if fraction >= 1.0:
        return images
    side_h, side_w = images.shape[1:3]
    h, w = max(1, round(side_h * fraction)), max(1, round(side_w * fraction))
    top, left = (side_h - h) // 2, (side_w - w) // 2
    return images[:, top : top + h, left : left + w]


def resize_square(x: jax.Array, size: int) -> jax.Array:
    """Antialiased bilinear resize to ``size`` x ``size``: the whole image downsampled."""
    return jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "linear", antialias=True)


def _pool(x: jax.Array, window: int = 2, stride: int = 2) -> jax.Array:
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding="SAME")


class WholeImageCNN(nn.Module):
    """A Table 1 baseline: one CNN on the (centre-cropped) image resized to ``input_size``.

    ``width`` scales every layer's channels and units (1 = the published net), so the same
    architecture fits a CPU budget. ``freeze_blocks`` (VGG16's FZ1-FZ4): the lower n conv blocks get
    no gradient, so Adam never moves them (their updates are exactly zero).
    """

    family: str
    input_size: int
    width: float = 1.0
    center_crop: float = 1.0
    freeze_blocks: int = 0
    dropout: float = 0.0
    dtype: Any = jnp.float32

    def _c(self, channels: int) -> int:
        return max(1, round(channels * self.width))

    def _conv(self, x: jax.Array, channels: int, k: int, stride: int = 1) -> jax.Array:
        conv_layer = nn.Conv(self._c(channels), (k, k), (stride, stride), padding="SAME",
                             kernel_init=xavier, dtype=self.dtype)
        return nn.relu(conv_layer(x))

    def _dense(self, x: jax.Array, units: int, train: bool) -> jax.Array:
        x = nn.relu(nn.Dense(self._c(units), kernel_init=xavier, dtype=self.dtype)(x))
        return nn.Dropout(self.dropout, deterministic=not train)(x) if self.dropout else x

    def _lenet(self, x: jax.Array, train: bool) -> jax.Array:
        x = _pool(self._conv(x, 6, 5))
        x = _pool(self._conv(x, 16, 5))
        x = x.reshape(x.shape[0], -1)
        return self._dense(self._dense(x, 120, train), 84, train)

    def _alexnet(self, x: jax.Array, train: bool) -> jax.Array:
        x = _pool(self._conv(x, 96, 11, 4), 3, 2)
        x = _pool(self._conv(x, 256, 5), 3, 2)
        for c in (384, 384, 256):
            x = self._conv(x, c, 3)
        x = _pool(x, 3, 2).reshape(x.shape[0], -1)
        return self._dense(self._dense(x, 4096, train), 4096, train)

    def _vgg16(self, x: jax.Array, train: bool) -> jax.Array:
        for block, (c, n) in enumerate(VGG16_BLOCKS, start=1):
            for _ in range(n):
                x = self._conv(x, c, 3)
            x = _pool(x)
            if block == self.freeze_blocks:
                x = jax.lax.stop_gradient(x)
        x = x.reshape(x.shape[0], -1)
        return self._dense(self._dense(x, 4096, train), 4096, train)

    def _inception_module(self, x: jax.Array, c1: int, c3: tuple[int, int],
                          c5: tuple[int, int], cp: int) -> jax.Array:
        branch3 = self._conv(self._conv(x, c3[0], 1), c3[1], 3)
        branch5 = self._conv(self._conv(x, c5[0], 1), c5[1], 5)
        pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding="SAME")
        return jnp.concatenate(
            [self._conv(x, c1, 1), branch3, branch5, self._conv(pooled, cp, 1)], axis=-1
        )

    def _inception(self, x: jax.Array, train: bool) -> jax.Array:
        """GoogLeNet's stem and its first four inception modules (3a, 3b, 4a, 4b), then global
        average pooling."""
        x = _pool(self._conv(x, 64, 7, 2), 3, 2)
        x = _pool(self._conv(self._conv(x, 64, 1), 192, 3), 3, 2)
        x = self._inception_module(x, 64, (96, 128), (16, 32), 32)
        x = self._inception_module(x, 128, (128, 192), (32, 96), 64)
        x = _pool(x, 3, 2)
        x = self._inception_module(x, 192, (96, 208), (16, 48), 64)
        x = self._inception_module(x, 160, (112, 224), (24, 64), 64)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dropout(self.dropout, deterministic=not train)(x) if self.dropout else x

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> ModelOutput:
        x = center_crop(images, self.center_crop)
        x = resize_square(normalise_pixels(x, jnp.float32), self.input_size).astype(self.dtype)
        body = {"lenet": self._lenet, "alexnet": self._alexnet, "vgg16": self._vgg16,
                "inception": self._inception}[self.family]
        f = body(x, train)
        logits = nn.Dense(1, kernel_init=xavier, dtype=self.dtype, name="classifier")(f)
        return ModelOutput(logits[:, 0].astype(jnp.float32), None, f.astype(jnp.float32))


class AttentionMIL(nn.Module):
    """Gated-attention MIL (Ilse et al. 2018) on the patch encoder: an annotation-free peer.

    a_k = softmax_k(w^T (tanh(V h_k) * sigmoid(U h_k))), f = sum_k a_k h_k. The attention sums to
    one over the patches; on the patch grid it is the heatmap (and what a regulator would act on).
    """

    patch_size: int = 28
    conv_features: Sequence[int] = (12, 24, 48)
    attention_hidden: int = 128
    classifier_hidden: Sequence[int] = (128, 32)
    dropout: float = 0.0
    dtype: Any = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> ModelOutput:
        rows, cols = images.shape[1] // self.patch_size, images.shape[2] // self.patch_size
        x = patchify(images, self.patch_size)
        b, k = x.shape[:2]
        patches = normalise_pixels(x.reshape(b * k, *x.shape[2:]), self.dtype)
        encoder = PatchEncoder(self.conv_features, self.dtype, self.conv_impl, name="encoder")
        h = encoder(patches).reshape(b, k, -1)
        dense = functools.partial(nn.Dense, kernel_init=xavier, dtype=self.dtype)
        gate = nn.tanh(dense(self.attention_hidden, name="attention_V")(h)) * nn.sigmoid(
            dense(self.attention_hidden, name="attention_U")(h)
        )
        score = dense(1, name="attention_w")(gate)[..., 0].astype(jnp.float32)
        a = jax.nn.softmax(score, axis=-1)  # (B, K)
        f = jnp.einsum("bk,bkf->bf", a.astype(self.dtype), h)
        logits = MLP(self.classifier_hidden, 1, self.dropout, dtype=self.dtype, name="classifier")(
            f, train
        )
        return ModelOutput(logits[:, 0].astype(jnp.float32), a.reshape(b, rows, cols),
                           f.astype(jnp.float32), score.reshape(b, rows, cols))


def has_weights(config: Any) -> bool:
    """Whether the config's model gives patch weights (a heatmap, a spatial loss, a regulator)."""
    return config.model.family not in WHOLE_IMAGE


def from_config(config: Any) -> nn.Module:
    """Build the model of ``config.model.family`` (and the shared ``config.patch_size``)."""
    m = config.model
    if m.family in WHOLE_IMAGE:
        return WholeImageCNN(
            family=m.family,
            input_size=m.input_size or INPUT_SIZES[m.family],
            width=m.width,
            center_crop=config.data.center_crop,
            freeze_blocks=m.freeze_blocks,
            dropout=m.dropout,
            dtype=jnp.dtype(m.dtype),
        )
    if m.family == "abmil":
        return AttentionMIL(
            patch_size=config.patch_size,
            conv_features=tuple(m.conv_features),
            attention_hidden=m.attention_hidden,
            classifier_hidden=tuple(m.classifier_hidden),
            dropout=m.dropout,
            dtype=jnp.dtype(m.dtype),
            conv_impl=m.conv_impl,
        )
    if m.remat and m.conv_impl == "xla" and jax.default_backend() == "cpu":
        logging.warning(
            "model.conv_impl='xla' with model.remat=True trains about 7x slower on CPU (XLA runs "
            "its own backward convolutions slowly inside the chunk loop): set model.remat=False "
            "or use conv_impl='s2d'"
        )
    if not m.remat and m.dtype == "bfloat16" and jax.default_backend() == "cpu":
        logging.warning(
            "model.remat=False with model.dtype='bfloat16' are GPU settings (--config=paper_gpu): "
            "on a CPU remat off alone trains about 1.2x and infers about 1.7x slower, and "
            "bfloat16 is slower again; use remat=True in float32 there (--config=paper)"
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
        spatial_into_encoder=config.regulator.get("reaches", "encoder") == "encoder",
        dtype=jnp.dtype(m.dtype),
        remat=m.remat,
        remat_chunk=m.remat_chunk,
        conv_impl=m.conv_impl,
    )


class InitError(ValueError):
    """``model.init_from`` cannot be loaded into this model; the message names the file."""


def flatten_params(params: Any) -> dict[str, np.ndarray]:
    """Parameters as a flat ``{"encoder/Conv_0/kernel": array}`` mapping: the init_from format."""
    flat = traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    return {k: np.asarray(v) for k, v in flat.items()}


def save_params(params: Any, path: str) -> None:
    """Write parameters in ``init_from``'s format (an uncompressed ``.npz``)."""
    np.savez(path, **flatten_params(params))


FOLD_FIELD = "{fold}"  # in model.init_from: one file per cross-validation fold


def init_from_for_fold(init_from: str, k: int) -> str:
    """``model.init_from`` for fold ``k`` (a single split is fold 0): ``FOLD_FIELD`` becomes ``k``
    (per-fold pretrained encoders, ``jaxcerv.training.pretrain``'s ``config.pretrain.per_fold``)."""
    return init_from.replace(FOLD_FIELD, str(k))


def load_init(params: Any, path: str) -> Any:
    """``params`` with every array the ``.npz`` at ``path`` names replaced by the file's.

    Names are parameter paths joined by "/"; parameters the file does not name keep their fresh
    initialisation (so a file may hold only the encoder). A name the model lacks or a shape that
    differs is an error: weights never land silently in the wrong layer."""
    where = f"config.model.init_from={path}"
    try:
        with np.load(path) as f:
            loaded = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise InitError(f"{where}: cannot read it as an .npz of named arrays ({e})") from e
    # Not flatten_params: this runs inside the jitted initialiser, where params are tracers.
    flat = traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    unknown = sorted(set(loaded) - set(flat))
    if unknown:
        raise InitError(
            f"{where}: {len(unknown)} names are not parameters of this model (first: "
            f"{unknown[0]!r}); its parameters are named like {sorted(flat)[0]!r} (see "
            "jaxcerv.model.networks.flatten_params)"
        )
    for k, v in loaded.items():
        if v.shape != flat[k].shape:
            raise InitError(f"{where}: {k!r} has shape {v.shape}, the model's is {flat[k].shape}")
    logging.info("init_from %s: %d of %d parameter arrays loaded", path, len(loaded), len(flat))
    merged = {k: jnp.asarray(loaded[k], flat[k].dtype) if k in loaded else v
              for k, v in flat.items()}
    return traverse_util.unflatten_dict(merged, sep="/")

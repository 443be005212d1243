"""Where the inference forward spends its time: each part's added cost inside the chunk loop.

    python benchmarks/profile_parts.py --config=configs/paper.py [--batch 4] [--repeats 9]

Times the model's own per-patch path (``model.map_patch_chunks``, as ``model.remat`` runs it,
over the model's ``PatchEncoder`` and weight ``MLP`` with the config's ``conv_impl``) cut after
each part: patchify + normalise, each conv layer, the weight MLP. The difference between
consecutive cuts is that part's cost in place, with the caches as the full model sees them, which
a layer timed alone over the whole batch does not show. Compiled with ``conv.compiler_options``
as the train and eval steps are; median of ``--repeats`` after one warm-up call, the cuts
interleaved. Parameters are random: the cost does not depend on their values.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxcerv.model import conv  # noqa: E402
from jaxcerv.model import networks as model_lib  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs/paper.py"))
_BATCH = flags.DEFINE_integer("batch", 4, "images per call")
_REPEATS = flags.DEFINE_integer("repeats", 9, "timed calls per cut; the median is reported")


def part_names(config: Any) -> list[str]:
    chans = (3, *config.model.conv_features)
    pairs = zip(chans[:-1], chans[1:], strict=True)
    convs = [f"conv {i + 1} ({a}->{b})" for i, (a, b) in enumerate(pairs)]
    return ["patchify + normalise", *convs, "weight MLP"]


def forward_upto(config: Any, upto: int):
    """images -> per-patch output of the first ``upto`` parts after patchify, in chunks."""
    m, p = config.model, config.patch_size
    n_conv = len(m.conv_features)
    dtype = jnp.dtype(m.dtype)
    encoder = model_lib.PatchEncoder(tuple(m.conv_features[:upto]), dtype, m.conv_impl)
    mlp = model_lib.MLP(tuple(m.weight_hidden), 1, dtype=dtype)
    patch = jnp.zeros((1, p, p, 3), jnp.float32)
    enc_params = encoder.init(jax.random.PRNGKey(0), patch)
    mlp_params = mlp.init(jax.random.PRNGKey(1), encoder.apply(enc_params, patch))

    def per_patch(chunk: jax.Array) -> jax.Array:
        b, k = chunk.shape[:2]
        x = model_lib.normalise_pixels(chunk.reshape(b * k, *chunk.shape[2:]), dtype)
        x = encoder.apply(enc_params, x)
        if upto > n_conv:
            x = mlp.apply(mlp_params, x)
        # A small output, so the cut's result costs nothing to write.
        return jnp.sum(x.astype(jnp.float32), axis=-1).reshape(b, k)

    def forward(images: jax.Array) -> jax.Array:
        x = model_lib.patchify(images, p)
        return model_lib.map_patch_chunks(per_patch, x, m.remat_chunk)

    return jax.jit(forward, compiler_options=conv.compiler_options(m.conv_impl))


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    side = config.grid_size * config.patch_size
    images = jnp.asarray(
        np.random.default_rng(0).integers(0, 256, (_BATCH.value, side, side, 3), dtype=np.uint8)
    )
    names = part_names(config)
    fns = [forward_upto(config, upto) for upto in range(len(names))]
    for fn in fns:
        jax.block_until_ready(fn(images))
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(_REPEATS.value):
        for fn, out in zip(fns, times, strict=True):
            t = time.perf_counter()
            jax.block_until_ready(fn(images))
            out.append(time.perf_counter() - t)
    print(f"batch {_BATCH.value}, {config.grid_size}x{config.grid_size} patches of "
          f"{config.patch_size} px, conv_impl={config.model.conv_impl}, {config.model.dtype}, "
          f"chunks of {config.model.remat_chunk} patches per image")
    previous = 0.0
    for name, t in zip(names, times, strict=True):
        ms = 1e3 * statistics.median(t)
        print(f"  {name:22s} {ms - previous:8.1f} ms   (cumulative {ms:8.1f} ms)")
        previous = ms


if __name__ == "__main__":
    app.run(main)

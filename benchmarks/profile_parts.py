"""Where the inference forward spends its time: each part's added cost inside the chunk loop.

    python benchmarks/profile_parts.py --config=configs/paper.py [--batch 4] [--repeats 9]

Times the model's own per-patch path (``model.remat``'s ``lax.map`` over checkpointed chunks of
``remat_chunk`` patches per image, ``conv.conv_pool_relu`` with the config's ``conv_impl``) cut
after each part: patchify + normalise, each conv layer, the weight MLP. The difference between
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

from jaxcerv import conv  # noqa: E402
from jaxcerv import model as model_lib  # noqa: E402

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
    rng = np.random.default_rng(0)
    c_in, kernels = 3, []
    for c_out in m.conv_features:
        kernels.append((rng.standard_normal((3, 3, c_in, c_out)) * 0.1).astype(np.float32))
        c_in = c_out
    side = p
    for _ in m.conv_features:
        side //= 2
    dims = (side * side * c_in, *m.weight_hidden, 1)
    dense = [(rng.standard_normal((a, b)) * 0.05).astype(np.float32) for a, b in zip(
        dims[:-1], dims[1:], strict=True)]
    n_conv = len(kernels)

    def per_patch(x: jax.Array) -> jax.Array:
        x = model_lib.normalise_pixels(x, jnp.float32)
        for i, k in enumerate(kernels[: min(upto, n_conv)]):
            x = conv.conv_pool_relu(x, k, jnp.zeros(k.shape[-1]), m.conv_impl, first=i == 0)
        x = x.reshape(x.shape[0], -1)
        if upto > n_conv:
            for w in dense[:-1]:
                x = jax.nn.relu(x @ w)
            x = x @ dense[-1]
        return jnp.sum(x, axis=-1)  # a small output, so the cut's result costs nothing to write

    def forward(images: jax.Array) -> jax.Array:
        x = model_lib.patchify(images, p)
        b, k = x.shape[:2]
        size = min(m.remat_chunk, k)
        chunks = -(-k // size)
        x = jnp.pad(x, ((0, 0), (0, chunks * size - k)) + ((0, 0),) * 3)
        x = x.reshape(b, chunks, size, *x.shape[2:]).swapaxes(0, 1)
        body = jax.checkpoint(lambda c: per_patch(c.reshape(-1, *c.shape[2:])))
        return jax.lax.map(body, x)

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
          f"{config.patch_size} px, conv_impl={config.model.conv_impl}, "
          f"chunks of {config.model.remat_chunk} patches per image")
    previous = 0.0
    for name, t in zip(names, times, strict=True):
        ms = 1e3 * statistics.median(t)
        print(f"  {name:22s} {ms - previous:8.1f} ms   (cumulative {ms:8.1f} ms)")
        previous = ms


if __name__ == "__main__":
    app.run(main)

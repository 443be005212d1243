"""Each encoder convolution alone, forward and forward + both gradients: XLA:CPU as jaxcerv runs
it against oneDNN (PyTorch's channels_last convolutions) in float32 and bfloat16.

    python benchmarks/conv_layers.py [--patches 144 7056] [--repeats 15]

Why: it prices the one remaining route to the CPU targets of issue 15, oneDNN's bfloat16
convolutions called through ``jax.ffi``, before anyone builds it. The shapes are the VALID
convolutions of ``conv_impl=s2d2`` (the space-to-depth layers 1 and 2, and layer 3 on its padded
input), for one chunk of the chunked model (144 patches: 4 images x 36) and for a whole batch of
4 paper-scale images (7056 patches). The XLA rows are ``conv.conv_valid`` (its custom gradients)
compiled with ``conv.compiler_options``; the PyTorch rows need the peers extra
(``pip install -e '.[peers]'``) and are left out, with a line saying so, without it. Median of
``--repeats`` calls after one warm-up call; the two libraries run one after the other, not
interleaved, so compare them within one run only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxcerv.model import conv  # noqa: E402

# (name, side of the VALID input, input channels, kernel side, output channels)
LAYERS = (
    ("layer 1, s2d: 15x15x12 -> 14x14x48 (k2)", 15, 12, 2, 48),
    ("layer 2, s2d: 8x8x48 -> 7x7x96 (k2)", 8, 48, 2, 96),
    ("layer 3: 9x9x24 -> 7x7x48 (k3)", 9, 24, 3, 48),
)


def median_s(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def xla_times(x: np.ndarray, w: np.ndarray, dy: np.ndarray, repeats: int) -> dict[str, float]:
    options = conv.compiler_options("s2d2")
    xj, wj, dyj = map(jnp.asarray, (x, w, dy))
    fwd = jax.jit(conv.conv_valid, compiler_options=options)

    def fwd_grads(x: jax.Array, w: jax.Array, dy: jax.Array) -> tuple[jax.Array, jax.Array]:
        return jax.vjp(conv.conv_valid, x, w)[1](dy)

    both = jax.jit(fwd_grads, compiler_options=options)
    return {
        "fwd": median_s(lambda: fwd(xj, wj).block_until_ready(), repeats),
        "fwd+grads": median_s(lambda: jax.block_until_ready(both(xj, wj, dyj)), repeats),
    }


def torch_times(x: np.ndarray, w: np.ndarray, dy: np.ndarray, dtype: str, repeats: int
                ) -> dict[str, float]:
    import torch

    cl = torch.channels_last
    dt = getattr(torch, dtype)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=cl).to(dt)
    wt = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(memory_format=cl).to(dt)
    dyt = torch.from_numpy(dy).permute(0, 3, 1, 2).contiguous(memory_format=cl).to(dt)
    xt.requires_grad_(True)
    wt.requires_grad_(True)

    def fwd() -> None:
        with torch.no_grad():
            torch.nn.functional.conv2d(xt, wt)

    def fwd_grads() -> None:
        torch.autograd.grad(torch.nn.functional.conv2d(xt, wt), (xt, wt), dyt)

    return {"fwd": median_s(fwd, repeats), "fwd+grads": median_s(fwd_grads, repeats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patches", type=int, nargs="+", default=[144, 7056])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    try:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)  # as many threads as XLA's pool
        dtypes = ["float32", "bfloat16"]
    except ImportError:
        print("PyTorch is not installed: pip install -e '.[peers]' to time oneDNN too")
        dtypes = []
    rng = np.random.default_rng(0)
    print(f"{'patches':>7s}  {'layer':42s} {'GFLOP':>6s}  ms: fwd / fwd+grads per library")
    for n in args.patches:
        for name, side, c, k, f in LAYERS:
            out = side - k + 1
            x = rng.random((n, side, side, c), np.float32)
            w = rng.random((k, k, c, f), np.float32) - 0.5
            dy = rng.random((n, out, out, f), np.float32)
            gflop = 2 * n * out * out * k * k * c * f / 1e9
            cells = {"xla f32": xla_times(x, w, dy, args.repeats)}
            for dtype in dtypes:
                cells[f"onednn {dtype}"] = torch_times(x, w, dy, dtype, args.repeats)
            print(f"{n:7d}  {name:42s} {gflop:6.3f}  " + " | ".join(
                f"{lib} {t['fwd'] * 1e3:.2f} / {t['fwd+grads'] * 1e3:.2f}"
                for lib, t in cells.items()), flush=True)


if __name__ == "__main__":
    main()

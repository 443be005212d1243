"""Images/s that `pipeline.batches` delivers at paper resolution (42 x 28 px patches = 1176 px).

Builds a synthetic_cervix dataset in a temporary folder (or --data_dir, reused when built), then
for each --workers setting runs whole epochs (shuffle + augment, as in training) and reports the
median over --repeats epochs after one warm-up epoch. An epoch's time includes starting its
pipeline (worker processes are started per epoch), which is what training pays.

Measured at 1176 px, 128 images, batch 8, augment on (images/s, median of 3 epochs):
  16-core H100 host: workers 0: 153 (prefetch 2), 219 (prefetch 8); workers 4: 32-37 (about
  2.5 s of worker start-up per epoch); without augmentation, workers 0: 391.
  2-core CI-like VM: workers 0: 10; workers 2: 3 (start-up about 13 s).

    .venv/bin/python benchmarks/input_pipeline.py --workers 0 2 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from jaxcerv.data import builders, pipeline


def _epoch(source, indices, args, workers: int, epoch: int) -> tuple[float, float]:
    """(seconds for the epoch, seconds to the first batch)."""
    start = time.perf_counter()
    first = None
    images = 0
    for batch in pipeline.batches(
        source, indices, batch_size=args.batch_size, seed=0, epoch=epoch, shuffle=True,
        augment=args.augment, drop_remainder=False, num_workers=workers, prefetch=args.prefetch,
    ):
        if first is None:
            first = time.perf_counter() - start
        images += int(batch["mask"].sum())
    assert images == len(indices)
    return time.perf_counter() - start, first or 0.0


def run(args: argparse.Namespace, data_dir: str) -> dict:
    builder = builders.make_builder(
        "synthetic_cervix", data_dir=data_dir, grid_size=args.grid_size,
        patch_size=args.patch_size, num_images=args.num_images, synthetic_seed=0,
    )
    t0 = time.perf_counter()
    built = builder.is_prepared()
    builders.prepare(builder)
    build_s = None if built else time.perf_counter() - t0
    source = builder.as_data_source(split=builders.SPLIT)
    indices = np.arange(len(source))
    results = []
    for workers in args.workers:
        _epoch(source, indices, args, workers, epoch=0)  # warm-up (page cache, imports)
        timings = [_epoch(source, indices, args, workers, epoch=1 + r) for r in range(args.repeats)]
        epoch_s = statistics.median(t for t, _ in timings)
        results.append({
            "num_workers": workers,
            "images_per_s": len(indices) / epoch_s,
            "epoch_s": epoch_s,
            "first_batch_s": statistics.median(f for _, f in timings),
            "epoch_s_all": [t for t, _ in timings],
        })
        print(
            f"workers={workers}: {len(indices) / epoch_s:.1f} images/s "
            f"(median epoch {epoch_s:.2f} s over {args.repeats}, first batch "
            f"{results[-1]['first_batch_s']:.2f} s)",
            file=sys.stderr if args.json else sys.stdout, flush=True,
        )
    return {
        "benchmark": "input_pipeline",
        "image_size": args.grid_size * args.patch_size,
        "num_images": args.num_images,
        "batch_size": args.batch_size,
        "augment": args.augment,
        "prefetch": args.prefetch,
        "build_s": build_s,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid_size", type=int, default=42)
    parser.add_argument("--patch_size", type=int, default=28)
    parser.add_argument("--num_images", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--data_dir", default="", help="reuse a build here (default: temp dir)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.data_dir:
        result = run(args, args.data_dir)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(args, str(Path(tmp) / "tfds"))
    if args.json:
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

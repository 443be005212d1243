"""Milliseconds per synthetic image at the demo (448 px) and paper (1176 px) sizes.

Usage: .venv/bin/python benchmarks/synthetic_speed.py [num_images]
"""

import sys
import time

from jaxcerv.data import synthetic


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    for grid, patch in ((16, 28), (42, 28)):
        synthetic.generate(0, seed=0, grid=grid, patch=patch)  # warm up
        start = time.perf_counter()
        for i in range(n):
            synthetic.generate(i, seed=0, grid=grid, patch=patch)
        ms = (time.perf_counter() - start) / n * 1e3
        print(f"{grid * patch:5d} px: {ms:6.1f} ms/image ({n} images)")


if __name__ == "__main__":
    main()

"""``jaxcerv bench [FLAGS]``: the throughput benchmark of a source checkout.

The benchmark (``benchmarks/throughput.py``, with the PyTorch peer in ``benchmarks/peers``) lives
beside the package, not in it: it needs the repository's ``benchmarks/`` folder and writes to the
untracked ``runs/bench``. From an editable install or a checkout this runs it with the given flags
(``jaxcerv bench --config=paper --batch 4 --peers``); from a wheel it says where to get it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "throughput.py"


def parse_flags(argv: list[str]) -> list[str]:
    """The benchmark parses its own flags: absl only marks none of ours as parsed, and the
    arguments pass through untouched."""
    from absl import flags

    flags.FLAGS(argv[:1])
    return argv


def main(argv: list[str]) -> int:
    if not SCRIPT.is_file():
        print(
            f"error: jaxcerv bench needs the source checkout's benchmarks/ folder ({SCRIPT} is "
            "missing): clone the repository and `pip install -e .` there, or run "
            "benchmarks/throughput.py from it",
            file=sys.stderr,
        )
        return 2
    os.execv(sys.executable, [sys.executable, str(SCRIPT), *argv[1:]])
    return 0  # not reached: execv replaces this process

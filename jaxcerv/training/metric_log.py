"""Metric writing: one JSONL line per epoch (what the report reads) and TensorBoard event files
(``tensorboard --logdir W``), both from process 0 only.

TensorBoard files are written with tensorboardX: clu's and flax's writers need TensorFlow, which
this project does not install.
"""

from __future__ import annotations

import math
from typing import Any

from jaxcerv.runtime import parallel
from jaxcerv.runtime.rundir import RunDir


class MetricWriter:
    """``write(row)`` appends ``row`` (with an ``epoch``) to ``metrics.jsonl`` and its numbers
    as scalars at that epoch to ``W/tensorboard``. A no-op on processes other than 0.

    The event file opens at the first row, with TensorBoard's ``purge_step`` at that row's epoch:
    after a resume (or a restart from scratch) TensorBoard hides what an earlier, killed call
    wrote at that epoch and later, as the JSONL is truncated, instead of drawing it twice."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self._tb = None
        self._enabled = parallel.is_writer()

    def write(self, row: dict[str, Any]) -> None:
        if not self._enabled:
            return
        if self._tb is None:
            from tensorboardX import SummaryWriter

            # The suffix keeps a resume within the same second from reusing the file name.
            self._tb = SummaryWriter(self.run.tensorboard, flush_secs=10,
                                     purge_step=row["epoch"],
                                     filename_suffix=f".epoch{row['epoch']:06d}")
        self.run.append_metrics(row)
        for key, value in row.items():
            if key != "epoch" and isinstance(value, int | float) and math.isfinite(value):
                self._tb.add_scalar(key, value, global_step=row["epoch"])
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

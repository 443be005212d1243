"""Metric writing: one JSONL line per epoch (what the report reads) and TensorBoard event files
(``tensorboard --logdir W``), both from process 0 only.

TensorBoard files are written with tensorboardX: clu's and flax's writers need TensorFlow, which
this project does not install.
"""

from __future__ import annotations

import math
from typing import Any

from jaxcerv import parallel
from jaxcerv.rundir import RunDir


class MetricWriter:
    """``write(row)`` appends ``row`` (with an ``epoch``) to ``metrics.jsonl`` and its numbers
    as scalars at that epoch to ``W/tensorboard``. A no-op on processes other than 0."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self._tb = None
        if parallel.is_writer():
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(run.tensorboard, flush_secs=10)

    def write(self, row: dict[str, Any]) -> None:
        if self._tb is None:
            return
        self.run.append_metrics(row)
        for key, value in row.items():
            if key != "epoch" and isinstance(value, int | float) and math.isfinite(value):
                self._tb.add_scalar(key, value, global_step=row["epoch"])
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

"""Progress that reads well in a terminal and in a log file.

On a terminal ``Progress`` redraws one line (a bar, step/total, rate, ETA); anywhere else (a log
file, a SLURM ``--output``) it writes a plain line every ``every_s`` seconds and at the end, so a
log never freezes on ``0/32`` for an epoch. The rate and ETA leave out the first step, which
carries the compilation. ``announce`` brackets the slow silent phases (compiling, evaluating,
writing the report) with a start line and a line with their duration.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

BAR_WIDTH = 24


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``: short and unambiguous in a log line."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def eta_seconds(done: int, total: int, t_first: float, now: float) -> float | None:
    """Remaining time at the rate measured after the first step (None until two steps are done)."""
    if done < 2 or now <= t_first:
        return None
    return (total - done) * (now - t_first) / (done - 1)


class Progress:
    """``update()`` once per step; ``close()`` (or the ``with`` block) writes the final line."""

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        stream: TextIO | None = None,
        every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        enabled: bool = True,
    ) -> None:
        self.total, self.desc, self.every_s, self.clock = total, desc, every_s, clock
        self.enabled = enabled  # False: count silently (every process but the writer)
        self.stream = sys.stderr if stream is None else stream
        self.tty = self.stream.isatty()
        self.done = 0
        self.postfix = ""
        self.t_start = clock()
        self.t_first: float | None = None  # when the first step finished
        self._last_line = self.t_start

    def line(self, now: float) -> str:
        """``desc: 16/32 (50%), 1 min 04 s, 0.51 step/s, ETA 31 s | postfix``."""
        pct = 100 * self.done // max(self.total, 1)
        elapsed = format_duration(now - self.t_start)
        text = f"{self.desc}: {self.done}/{self.total} ({pct}%), {elapsed}"
        eta = eta_seconds(self.done, self.total, self.t_first or now, now)
        if eta is not None:
            rate = (self.done - 1) / (now - (self.t_first or now))
            text += f", {rate:.2g} step/s, ETA {format_duration(eta)}"
        if self.tty:
            filled = BAR_WIDTH * self.done // max(self.total, 1)
            text = f"{text} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}]"
        return f"{text} | {self.postfix}" if self.postfix else text

    def update(self, n: int = 1, postfix: str = "") -> None:
        now = self.clock()
        self.done += n
        if self.t_first is None:
            self.t_first = now
        self.postfix = postfix or self.postfix
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K" + self.line(now))
            self.stream.flush()
        elif now - self._last_line >= self.every_s and self.done < self.total:
            self._write(self.line(now))
            self._last_line = now

    def close(self) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if self.tty:
            self.stream.write("\r\033[K")
        self._write(self.line(now))

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def announce(
    what: str,
    *,
    stream: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
    enabled: bool = True,
) -> Iterator[None]:
    """``what...`` before the block and ``what: done in 12 s`` after it (not on an error)."""
    out = sys.stderr if stream is None else stream
    if enabled:
        out.write(f"{what}...\n")
        out.flush()
    start = clock()
    yield
    if enabled:
        out.write(f"{what}: done in {format_duration(clock() - start)}\n")
        out.flush()

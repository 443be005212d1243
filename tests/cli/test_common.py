"""``jaxcerv.cli.common``: a Ctrl-C that lands inside ``asyncio.run`` (where orbax does its
checkpoint I/O) still interrupts the command."""

from __future__ import annotations

import asyncio
import signal

import pytest

from jaxcerv.cli import common


async def _io_that_finishes_anyway() -> str:
    """Ctrl-C arrives mid-I/O; the coroutine, like a save that completes, ends normally."""
    signal.raise_signal(signal.SIGINT)
    try:
        await asyncio.sleep(0.05)
    except asyncio.CancelledError:
        pass
    return "saved"


def test_ctrl_c_inside_asyncio_run_interrupts():
    previous = signal.getsignal(signal.SIGINT)
    try:
        # The trap: under Python's default handler asyncio.run drops the Ctrl-C.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        assert asyncio.run(_io_that_finishes_anyway()) == "saved"
        common.ctrl_c_always_interrupts()
        with pytest.raises(KeyboardInterrupt):
            asyncio.run(_io_that_finishes_anyway())
    finally:
        signal.signal(signal.SIGINT, previous)

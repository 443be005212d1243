"""Shared test helpers. Tests run on CPU; multi-device tests start their own subprocesses."""

import os
import struct
import sys
import zlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# `configs` is imported as a package by config files that build on the default.
sys.path.insert(0, str(REPO))
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="session")
def smoke_workdir(tmp_path_factory) -> str:
    """A finished train_and_evaluate run of configs/smoke.py, made once per test session (per
    xdist worker) and shared by the report and predict tests."""
    from configs import smoke
    from jaxcerv import train

    workdir = tmp_path_factory.getbasetemp() / "smoke_run"
    if not (workdir / "results.json").exists():
        train.train_and_evaluate(smoke.get_config(), str(workdir))
    return str(workdir)


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but holds none (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")

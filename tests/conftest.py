"""Shared test helpers. Tests run on CPU; multi-device tests start their own subprocesses."""

import os
import shutil
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# `configs` is imported as a package by config files that build on the default.
sys.path.insert(0, str(REPO))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile many small programs and run each a few steps: XLA's CPU backend (LLVM) at
# optimisation level 0 compiles them about 3x faster (Inception baseline 13 -> 3.3 s) and the
# tests/model + tests/training files run in two thirds of the time. The HLO programs are the same
# (only LLVM's code generation changes), so float results can differ from an optimised build in
# the last bits only, and no test compares across levels: each compares with an oracle within a
# tolerance, or two runs at the same level. The demo, the benchmarks and users' runs keep XLA's
# default. Set the level in XLA_FLAGS yourself to test at another one.
OPT_LEVEL = "--xla_backend_optimization_level"
if OPT_LEVEL not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {OPT_LEVEL}=0".strip()
CACHE = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
    """One persistent XLA compilation cache for the run: the xdist workers and every subprocess a
    test starts inherit it, so a program that many tests build (a smoke run's train step, the
    resumed run after a kill) compiles once. A fresh folder per run, removed at the end: no run
    depends on an earlier one. An XLA_FLAGS or JAX version change is part of the cache key."""
    if CACHE not in os.environ:
        config.jaxcerv_cache = tempfile.mkdtemp(prefix="jaxcerv-xla-cache-")
        os.environ[CACHE] = config.jaxcerv_cache
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def pytest_unconfigure(config):
    if getattr(config, "jaxcerv_cache", None):
        shutil.rmtree(config.jaxcerv_cache, ignore_errors=True)


@pytest.fixture(scope="session")
def smoke_workdir(tmp_path_factory) -> str:
    """A finished train_and_evaluate run of configs/smoke.py, made once per test session (per
    xdist worker) and shared by the report and predict tests."""
    from configs import smoke
    from jaxcerv.training import train
    workdir = tmp_path_factory.getbasetemp() / "smoke_run"
    if not (workdir / "results.json").exists():
        train.train_and_evaluate(smoke.get_config(), str(workdir))
    return str(workdir)


@pytest.fixture(scope="session")
def predict_inputs(smoke_workdir, tmp_path_factory):
    """Inputs for predict on the smoke run, (paths, the saved test row the PNG holds): a JPEG
    of 300x200, a corrupt JPEG and a dataset image saved losslessly as PNG."""
    import io

    from jaxcerv.data import pipeline
    from jaxcerv.runtime.rundir import RunDir

    folder = tmp_path_factory.mktemp("inputs")
    with np.load(os.path.join(smoke_workdir, "eval", "test.npz")) as z:
        saved = {k: z[k] for k in z.files}
    row = 0
    source, records = pipeline.load(RunDir(smoke_workdir).read_config(), smoke_workdir)
    index = int(np.flatnonzero(records.ids == saved["ids"][row])[0])
    png = folder / "dataset image.png"
    Image.fromarray(np.asarray(source[index]["image"])).save(png)

    rng = np.random.default_rng(0)
    jpeg = folder / "wide.jpg"
    Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(jpeg, quality=90)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (120, 120, 3), dtype=np.uint8)).save(buf, "JPEG")
    corrupt = folder / "corrupt.jpg"
    corrupt.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # truncated stream
    paths = [str(jpeg), str(corrupt), str(png)]
    return paths, {k: v[row] for k, v in saved.items()}


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but holds none (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def session_folders(tmp_path, n_sessions=9):
    """A labelled folder dataset (cervix_folder) with one folder per session, each holding two
    labelled photographs and one unlabelled view; returns {session: [file, ...]}."""
    root = tmp_path / "photos"
    rng = np.random.default_rng(1)
    rows, files = ["image,session,label"], {}
    for j in range(n_sessions):
        folder = root / f"case_s{j}"
        folder.mkdir(parents=True)
        files[f"s{j}"] = []
        for i, kind in enumerate(("via", "via", "lugol")):
            name = f"{i}_{kind}.png"
            Image.fromarray(rng.integers(60, 256, (48, 40, 3), np.uint8)).save(folder / name)
            files[f"s{j}"].append(name)
            if kind == "via":
                rows.append(f"case_s{j}/{name},s{j},{int(j >= n_sessions // 2)}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return files


def session_folder_config(tmp_path):
    """A tiny config (2x2 patches of 16 px, one pretraining epoch of 2 steps) on
    ``session_folders(tmp_path)``: 3-fold CV grouped by session."""
    from configs import default

    config = default.get_config()
    config.grid_size, config.patch_size = 2, 16
    config.model.conv_features = (4, 8)
    config.data.name = "cervix_folder"
    config.data.manual_dir = str(tmp_path / "photos")
    config.data.csv = str(tmp_path / "labels.csv")
    config.data.num_folds = 3
    config.data.val_fraction = 0.2
    config.pretrain.epochs = 1
    config.pretrain.steps_per_epoch = 2
    config.pretrain.batch_patches = 8
    config.pretrain.projection = (16, 8)
    return config


def scored_sessions(n=120, seed=0, quality=1.0):
    """Labels 0/1 alternating, scores separating them by ``quality`` (plus unit noise), and two
    images per session: what a suite row's pooled test predictions look like."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    probs = 1 / (1 + np.exp(-(quality * (2 * labels - 1) + rng.normal(size=n))))
    sessions = np.array([f"s{i // 2}" for i in range(n)])
    return labels, probs, sessions

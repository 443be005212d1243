"""The run lifecycle under faults, on the smoke config: kills at several points resume to a
bit-identical result; divergence, a busy workdir, corrupt checkpoints and a failed save each stop
with one line and leave a run that a rerun finishes.

Each run is a subprocess (a SIGKILL must kill a whole process). The kill points are planted by a
small driver script that wraps jaxcerv functions from outside; nothing in jaxcerv knows of it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from jaxcerv.configs import smoke

REPO = Path(__file__).resolve().parents[1]

_DRIVER = r'''
import os, signal, sys
sys.path.insert(0, os.environ["REPO"])
from configs import smoke
from jaxcerv.training import checkpointing
from jaxcerv.evaluation import evaluate
from jaxcerv.training import train
from jaxcerv.training import metric_log as writer
def die():
    os.kill(os.getpid(), signal.SIGKILL)

spec = os.environ.get("KILL_AT", "")
if spec:
    kind, *args = spec.split(":")
    if kind == "before_save":  # e.g. before_save:best:2 = after latest/2 committed, before best/2
        orig_save = checkpointing.Checkpoints.save
        def save(self, k, epoch, state, meta):
            if k == args[0] and epoch == int(args[1]):
                die()
            return orig_save(self, k, epoch, state, meta)
        checkpointing.Checkpoints.save = save
    elif kind == "after_metrics":  # the epoch's metrics written, no checkpoint of it yet
        orig_write = writer.MetricWriter.write
        def write(self, row):
            orig_write(self, row)
            if row["epoch"] == int(args[0]):
                die()
        writer.MetricWriter.write = write
    elif kind == "in_evaluation":  # training done, test predictions not yet saved
        orig_pred = evaluate.save_predictions
        def save_predictions(run, split, pred):
            if split == "test":
                die()
            return orig_pred(run, split, pred)
        evaluate.save_predictions = save_predictions

config = smoke.get_config()
config.train.epochs = 3
config.train.patience = 10
config.data.data_dir = sys.argv[2]
train.train_and_evaluate(config, sys.argv[1])
'''

TIMING = ("epoch_time_s", "img_per_s")


def _env() -> dict[str, str]:
    return {**os.environ, "REPO": str(REPO), "JAX_PLATFORMS": "cpu"}


def _drive(tmp: Path, workdir: Path, kill_at: str = "") -> subprocess.CompletedProcess:
    driver = tmp / "driver.py"
    if not driver.exists():
        driver.write_text(_DRIVER)
    return subprocess.run(
        [sys.executable, str(driver), str(workdir), str(tmp / "tfds")],
        env={**_env(), "KILL_AT": kill_at}, capture_output=True, text=True, timeout=600,
    )


def _outcome(workdir: Path) -> dict:
    """Everything a finished run produced that must not depend on interruptions."""
    rows = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
    with np.load(workdir / "eval" / "test.npz") as z:
        test = {k: z[k] for k in z.files}
    return {
        "results": json.loads((workdir / "results.json").read_text()),
        "metrics": [{k: v for k, v in r.items() if k not in TIMING} for r in rows],
        "test": test,
        "regulators": np.load(workdir / "regulators" / "epoch_0003.npy"),
    }


def _best_epochs(rows: list[dict]) -> list[int]:
    """Oracle for model selection: the epochs that a higher val AUC (ties: lower val loss)
    made the new best, written out by hand."""
    best, out = None, []
    for r in rows:
        if best is None or r["val_roc_auc"] > best[0] or (
            r["val_roc_auc"] == best[0] and r["val_loss"] < best[1]
        ):
            best = (r["val_roc_auc"], r["val_loss"])
            out.append(r["epoch"])
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lifecycle")
    workdir = tmp / "reference"
    proc = _drive(tmp, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, _outcome(workdir)


def _assert_same(a: dict, b: dict) -> None:
    assert a["results"] == b["results"]
    assert a["metrics"] == b["metrics"]
    assert a["test"].keys() == b["test"].keys()
    for k in a["test"]:
        np.testing.assert_array_equal(a["test"][k], b["test"][k], err_msg=k)
    np.testing.assert_array_equal(a["regulators"], b["regulators"])


def test_model_selection_and_tested_epoch_follow_the_hand_written_rule(reference):
    _, ref = reference
    best = _best_epochs(ref["metrics"])
    assert ref["results"]["best_epoch"] == best[-1]


@pytest.mark.parametrize("point", ["before_save:best", "after_metrics:2", "in_evaluation"])
def test_killed_run_resumes_to_the_identical_result(reference, point):
    tmp, ref = reference
    if point == "before_save:best":
        # Between the latest and best commits of the last epoch that became the best.
        point = f"before_save:best:{_best_epochs(ref['metrics'])[-1]}"
    workdir = tmp / point.replace(":", "_")
    killed = _drive(tmp, workdir, kill_at=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = _drive(tmp, workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same(ref, _outcome(workdir))


def _main(workdir: Path, tfds: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jaxcerv.main", "--config=configs/smoke.py",
         f"--workdir={workdir}", f"--config.data.data_dir={tfds}", *flags],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600,
    )


def _error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]


def _no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_divergence_stops_at_once_and_a_fixed_rerun_resumes(reference):
    tmp, _ = reference
    workdir, tfds = tmp / "diverge", tmp / "tfds"
    assert _main(workdir, tfds, "--config.train.epochs=1").returncode == 0
    digest_before = json.loads(
        (workdir / "checkpoints" / "latest" / "1" / "meta" / "metadata").read_text()
    )["digest"]
    # Another learning rate would mix two configs in one folder: refused, naming the key.
    other_lr = _main(workdir, tfds, "--config.train.epochs=2", "--config.train.learning_rate=1e6")
    assert other_lr.returncode == 1
    (line,) = _error_lines(other_lr)
    lr = smoke.get_config().train.learning_rate
    assert f"train.learning_rate: {lr} -> 1000000.0" in line and "restart=True" in line, line
    # The guard (an allowed change) planted so low that epoch 2's first step trips it.
    bad = _main(workdir, tfds, "--config.train.epochs=2", "--config.train.max_bce=1e-3")
    assert bad.returncode == 1
    _no_traceback(bad)
    (line,) = _error_lines(bad)
    assert re.search(rf"diverged at epoch 2, step [4-6] \(learning rate {lr:g}\)", line), line
    # Nothing of the diverged epoch was saved; the last good checkpoint is intact.
    for kind in ("latest", "best"):
        assert sorted(os.listdir(workdir / "checkpoints" / kind)) == ["1"]
    meta = json.loads((workdir / "checkpoints" / "latest" / "1" / "meta" / "metadata").read_text())
    assert meta["digest"] == digest_before
    fixed = _main(workdir, tfds, "--config.train.epochs=2")
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert "Resuming from epoch 1" in fixed.stdout
    rows = (workdir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]


def test_busy_workdir_refuses_and_a_stale_lock_is_taken_over(reference, tmp_path):
    tmp, _ = reference
    holder = subprocess.Popen(["sleep", "60"])
    try:
        import socket

        workdir = tmp_path / "busy"
        workdir.mkdir()
        (workdir / "lock").write_text(json.dumps({"host": socket.gethostname(),
                                                  "pid": holder.pid}))
        busy = _main(workdir, tmp / "tfds", "--config.train.epochs=1")
        assert busy.returncode == 1
        _no_traceback(busy)
        (line,) = _error_lines(busy)
        assert f"in use by pid {holder.pid}" in line
        assert sorted(os.listdir(workdir)) == ["lock"]  # nothing else written
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone now: its lock is stale and the run takes it over, then releases it.
    ok = _main(workdir, tmp / "tfds", "--config.train.epochs=1")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert not (workdir / "lock").exists()


def _largest_file(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_truncated_latest_falls_back_to_the_step_before(smoke_workdir, reference, tmp_path):
    tmp, _ = reference
    workdir = tmp_path / "run"
    shutil.copytree(smoke_workdir, workdir)
    victim = _largest_file(workdir / "checkpoints" / "latest" / "2" / "state")
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    proc = _main(workdir, tmp / "tfds", "--config.train.epochs=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # One warning line: no orbax/TensorStore log lines or "Exception ignored" tracebacks.
    warnings = [ln for ln in proc.stderr.splitlines()
                if "warning" in ln.lower() or re.match(r"[WEF]\d{4} ", ln)]
    assert len(warnings) == 1, "\n".join(warnings)
    assert re.fullmatch(r"warning: .*checkpoints/latest/2 is unreadable \(.{1,200}\); trying an "
                        r"older checkpoint", warnings[0]), warnings[0]
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr
    assert "Resuming from epoch 1" in proc.stdout
    rows = [json.loads(r) for r in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_corrupt_best_is_one_line_for_predict(smoke_workdir, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(smoke_workdir, workdir)
    best = json.loads((workdir / "results.json").read_text())["best_epoch"]
    for victim in (workdir / "checkpoints" / "best" / str(best) / "state").rglob("d/*"):
        data = bytearray(victim.read_bytes())
        for k in range(64, len(data), 997):  # bit rot all over the stored arrays
            data[k] ^= 0xFF
        victim.write_bytes(bytes(data))
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.full((112, 112, 3), 128, np.uint8)).save(image)
    proc = subprocess.run(
        [sys.executable, "-m", "jaxcerv.cli.app", "predict", f"--workdir={workdir}", str(image)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    _no_traceback(proc)
    (line,) = _error_lines(proc)
    assert f"checkpoints/best/{best}" in line and ("digest" in line or "unreadable" in line), line
    assert proc.stdout == ""  # no JSON line with a score from a damaged model


def test_failed_save_stops_the_run_before_it_trains_on(reference, tmp_path, monkeypatch):
    import errno

    import orbax.checkpoint as ocp

    from configs import smoke
    from jaxcerv.training import train
    from jaxcerv.training.checkpointing import CheckpointError

    tmp, _ = reference
    real_save = ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):
        if step == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    config = smoke.get_config()
    config.train.epochs = 3
    config.data.data_dir = str(tmp / "tfds")
    workdir = tmp_path / "full"
    with pytest.raises(CheckpointError, match=r"saving .*latest/2 failed .*No space left"):
        train.train_and_evaluate(config, str(workdir))
    rows = [json.loads(r) for r in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # epoch 3 never started
    assert not (workdir / "lock").exists()
    monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
    results = train.train_and_evaluate(config, str(workdir))  # resumes from epoch 1
    rows = [json.loads(r) for r in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert results["epochs_run"] == 3

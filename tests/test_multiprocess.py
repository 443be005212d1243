"""launch/local_multiprocess.sh 2: two CPU processes form one JAX runtime and train together.

One launch of the smoke config (two epochs) is shared by this file's tests: what each process
wrote is recorded by a Python audit hook (a sitecustomize.py this test puts on PYTHONPATH; nothing
in jaxcerv knows about it), and each process prints the sha256 of its own replica of the final
params + regulators; the oracle for those digests is the orbax checkpoint, restored here in a
single process. The same launch is the uninterrupted reference of the killed-worker test.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PROCESSES = 2

# Logs every file this process opens for writing (or removes/renames), one TSV line per event:
# process_id (from --process_id), event, path. The log file is opened before the hook exists.
_HOOK = r'''
import os, sys

_log = open(os.path.join(os.environ["AUDIT_DIR"], f"{os.getpid()}.tsv"), "a", buffering=1)


def _process_id():
    for arg in sys.argv:
        if arg.startswith("--process_id="):
            return arg.split("=", 1)[1]
    return "?"


def _hook(event, args):
    if event == "open":
        path, mode, flags = args
        writing = (
            any(c in mode for c in "wax+") if isinstance(mode, str)
            else bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        )
        paths = [path] if writing else []
    elif event == "os.remove":
        paths = [args[0]]
    elif event == "os.rename":  # also os.replace
        paths = list(args[:2])
    else:
        return
    for path in paths:
        if isinstance(path, (str, bytes, os.PathLike)):
            _log.write(f"{_process_id()}\t{event}\t{os.path.abspath(os.fsdecode(path))}\n")


sys.addaudithook(_hook)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The smoke config's two epochs; the one heatmap checks that figures are process 0's alone too.
_RUN_FLAGS = ("--config=configs/smoke.py", "--config.eval.num_heatmaps=1")


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multiprocess")
    (tmp / "hook").mkdir()
    (tmp / "audit").mkdir()
    (tmp / "hook" / "sitecustomize.py").write_text(_HOOK)
    workdir = tmp / "run"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join([str(tmp / "hook"), os.environ.get("PYTHONPATH", "")]),
        "AUDIT_DIR": str(tmp / "audit"),
        "COORDINATOR_PORT": str(_free_port()),
    }
    proc = subprocess.run(  # `timeout`: a hang in a checkpoint barrier fails here, not at 300 s
        ["timeout", "-s", "TERM", "150", str(REPO / "launch" / "local_multiprocess.sh"),
         str(PROCESSES), *_RUN_FLAGS, f"--workdir={workdir}",
         f"--config.data.data_dir={tmp / 'tfds'}"],  # the data cache is not under test
        cwd=REPO, env=env, capture_output=True, text=True, timeout=200,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    writes: dict[str, set[str]] = {}
    for log in (tmp / "audit").glob("*.tsv"):
        for line in log.read_text().splitlines():
            process, _, path = line.split("\t")
            if path.startswith(str(workdir) + os.sep):
                writes.setdefault(process, set()).add(os.path.relpath(path, workdir))
    return workdir, output, writes


def test_every_process_ends_with_the_checkpointed_params_and_regulators(launched):
    """Both processes print the digest of the parameters, their moving average and the
    regulators that process 0 saved."""
    import jax
    import orbax.checkpoint as ocp

    from jaxcerv.runtime import parallel
    workdir, output, _ = launched
    digests = dict(re.findall(r"process (\d+)/2: state sha256 ([0-9a-f]{64})", output))
    assert sorted(digests) == ["0", "1"], output[-3000:]
    # Independently: the state process 0 saved after the epoch, restored here as numpy.
    path = workdir / "checkpoints" / "latest" / "2" / "state"
    checkpointer = ocp.PyTreeCheckpointer()
    metadata = checkpointer.metadata(path).item_metadata
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
    saved = checkpointer.restore(path, restore_args=as_numpy)
    want = parallel.replica_digest({"params": saved["params"], "ema_params": saved["ema_params"],
                                    "regulators": saved["regulators"]})
    assert digests == {"0": want, "1": want}


def test_runtime_and_metrics_record_both_processes(launched):
    workdir, _, _ = launched
    runtime = json.loads((workdir / "results.json").read_text())["runtime"]
    assert runtime["processes"] == PROCESSES and runtime["devices"] == PROCESSES
    assert runtime["mesh_shape"] == {"data": PROCESSES}
    rows = (workdir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]  # one writer: no duplicated lines


def test_only_process_zero_writes_files(launched):
    _, _, writes = launched
    # Sanity of the hook: process 0's writes are seen.
    for name in ("results.json", "metrics.jsonl", "config.json", "splits.json"):
        assert name in writes.get("0", set()), sorted(writes.get("0", set()))
    # Orbax checkpoints are a collective write (each process commits its own shards, through
    # tensorstore, which this hook does not see); everything else is process 0's alone.
    others = {
        p: sorted(f for f in files if not f.startswith("checkpoints" + os.sep))
        for p, files in writes.items()
        if p != "0"
    }
    assert others in ({}, {"1": []}), others


def test_launcher_stops_the_others_when_one_fails(tmp_path):
    """A stand-in for python: process 1 fails at once, process 0 would wait a minute for it."""
    fake = tmp_path / "python"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'for a; do [[ $a == --process_id=* ]] && id=${a#*=}; done\n'
        'if [[ $id == 1 ]]; then echo "process 1 fails"; exit 3; fi\n'
        "exec sleep 60\n"
    )
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "COORDINATOR_PORT": str(_free_port())}
    proc = subprocess.run(
        [str(REPO / "launch" / "local_multiprocess.sh"), "2", "--workdir=unused"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=45,
    )
    assert proc.returncode == 3
    assert "[process 1] process 1 fails" in proc.stdout
    assert "process 1 exited with status 3; stopping the others" in proc.stderr


def test_stopping_the_launcher_stops_workers_that_ignore_sigterm(tmp_path):
    """`timeout` sends the launcher SIGTERM; its workers (here: stand-ins that ignore SIGTERM,
    as a worker blocked in a barrier does) must not outlive it."""
    fake = tmp_path / "python"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        "trap '' TERM\n"
        f'echo $$ > "{tmp_path}/pid.$RANDOM$RANDOM"\n'
        "while :; do sleep 0.2; done\n"
    )
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "COORDINATOR_PORT": str(_free_port())}
    proc = subprocess.run(
        ["timeout", "-s", "TERM", "3", str(REPO / "launch" / "local_multiprocess.sh"), "2",
         "--workdir=unused"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 124  # timeout's status: it had to stop the launcher
    pids = [int(p.read_text()) for p in tmp_path.glob("pid.*")]
    assert len(pids) == 2
    import time

    deadline = time.monotonic() + 5
    while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if os.path.exists(f"/proc/{p}")]


def test_two_process_checkpointing_never_hangs(tmp_path, launched):
    """Each epoch commits `latest` (and `best` when validation improves) from both processes; with
    shared barrier names the two managers' barriers collided and both processes waited out
    orbax's 300 s timeout, in about 1 of 3 two-epoch launches. Eight epochs in one launch commit
    as often as the four two-epoch launches that caught it (80%), at one start-up's cost; the
    shared launch and the killed-worker test's launches commit again."""
    workdir, _, _ = launched
    env = {**os.environ, "PYTHON": sys.executable, "COORDINATOR_PORT": str(_free_port())}
    proc = subprocess.run(
        ["timeout", "-s", "TERM", "150", str(REPO / "launch" / "local_multiprocess.sh"),
         str(PROCESSES), "--config=configs/smoke.py", f"--workdir={tmp_path / 'run'}",
         "--config.train.epochs=8", "--config.train.patience=8", "--config.eval.num_heatmaps=0",
         f"--config.data.data_dir={workdir.parent / 'tfds'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=200,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints" / "latest"), key=int)[-1] == "8"


# Runs jaxcerv.main; with KILL_AT_STEP=n, process 1 SIGKILLs itself at its n-th train step
# (smoke: 3 steps an epoch, so 4 is the first step of epoch 2, after epoch 1's checkpoint).
_KILLING_DRIVER = r'''
import os, signal, sys
from jaxcerv.training import steps
_jit_steps = steps.jit_steps
def jit_steps(*args, **kwargs):
    train_step, eval_step = _jit_steps(*args, **kwargs)
    calls = [0]
    def step(state, batch):
        calls[0] += 1
        if calls[0] == int(os.environ.get("KILL_AT_STEP", "0")) and "--process_id=1" in sys.argv:
            os.kill(os.getpid(), signal.SIGKILL)
        return train_step(state, batch)
    return step, eval_step
steps.jit_steps = jit_steps
from jaxcerv.cli import app
app.main([sys.argv[0], "train", *sys.argv[1:]])
'''


def _start_pair(tmp: Path, workdir: Path, kill_at: int, tfds: Path) -> list[subprocess.Popen]:
    """Two processes started by hand (as on two hosts: no launcher to stop the survivor)."""
    driver = tmp / "driver.py"
    driver.write_text(_KILLING_DRIVER)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "KILL_AT_STEP": str(kill_at),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    port = _free_port()
    procs = []
    for k in range(PROCESSES):  # output to files: a full pipe would stall a process
        log = tmp / f"{workdir.name}.{kill_at}.{k}"
        procs.append(subprocess.Popen(
            [sys.executable, str(driver), f"--coordinator=127.0.0.1:{port}",
             f"--num_processes={PROCESSES}", f"--process_id={k}", *_RUN_FLAGS,
             f"--workdir={workdir}", f"--config.data.data_dir={tfds}"],
            cwd=REPO, env=env, stdout=open(f"{log}.out", "w"), stderr=open(f"{log}.err", "w"),
        ))
        procs[-1].log = log
    return procs


def _output(proc: subprocess.Popen, stream: str = "err") -> str:
    return Path(f"{proc.log}.{stream}").read_text()


def _outcome(workdir: Path) -> dict:
    rows = [{k: v for k, v in json.loads(r).items() if k not in ("epoch_time_s", "img_per_s")}
            for r in (workdir / "metrics.jsonl").read_text().splitlines()]
    with np.load(workdir / "eval" / "test.npz") as z:
        test = {k: z[k] for k in z.files}
    return {"results": json.loads((workdir / "results.json").read_text()), "metrics": rows,
            "test": test}


@pytest.mark.slow
def test_a_killed_worker_stops_its_peer_in_one_line_and_a_rerun_resumes(tmp_path, launched):
    """SIGKILL of process 1 in epoch 2: process 0 exits at once (not at JAX's 100 s heartbeat
    timeout, nor aborting in its 300 s shutdown barrier) with one line naming process 1; the same
    launch again resumes from epoch 1 to the result of a run never interrupted (the shared
    launch: same config, same data)."""
    import time

    reference, _, _ = launched
    tfds = reference.parent / "tfds"
    killed = _start_pair(tmp_path, tmp_path / "run", kill_at=4, tfds=tfds)
    assert killed[1].wait(timeout=600) == -9
    died = time.monotonic()
    try:
        killed[0].wait(timeout=60)
    finally:
        killed[0].kill()
    err = _output(killed[0])
    assert time.monotonic() - died < 60
    assert killed[0].returncode == 1, err[-3000:]
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert line.startswith("error: process 0: lost process 1 of this run ("), line
    assert line.endswith("rerun the same launch to resume from the last complete checkpoint")
    assert "Traceback" not in err and "Check failure" not in err, err[-3000:]

    resumed = _start_pair(tmp_path, tmp_path / "run", kill_at=0, tfds=tfds)
    for p in resumed:
        assert p.wait(timeout=600) == 0, _output(p)[-3000:]
    assert "Resuming from epoch 1" in _output(resumed[0], "out")
    got, want = _outcome(tmp_path / "run"), _outcome(reference)
    assert got["results"] == want["results"] and got["metrics"] == want["metrics"]
    for k in want["test"]:
        np.testing.assert_array_equal(got["test"][k], want["test"][k], err_msg=k)

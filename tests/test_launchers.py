"""The SLURM and TPU launchers, run against stand-in `srun` / `gcloud` commands that record what
they were asked to do (the remote commands run here, in a stand-in home folder)."""

import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO

FAKE_SRUN = """#!/usr/bin/env bash
echo "srun $* JAX_LOCAL_DEVICE_IDS=${JAX_LOCAL_DEVICE_IDS:-unset}"
"""
# Runs the --command of `gcloud ... ssh` in $HOME with bash, like one worker would.
FAKE_GCLOUD = """#!/usr/bin/env bash
for a in "$@"; do
  case "$a" in --command=*) cd "$HOME" && exec bash -c "${a#--command=}" ;; esac
done
echo "gcloud $*"
"""


def _tool(folder: Path, name: str, text: str) -> None:
    path = folder / name
    path.write_text(text)
    path.chmod(0o755)


def _slurm(tmp_path, mode, tasks_per_node, gpus="4"):
    _tool(tmp_path, "srun", FAKE_SRUN)
    env = {
        "PATH": f"{tmp_path}:{os.environ['PATH']}", "MODE": mode, "SLURM_SUBMIT_DIR": str(REPO),
        "SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": gpus,
        "SLURM_NTASKS_PER_NODE": tasks_per_node, "SLURM_CPUS_PER_TASK": "6",
    }
    return subprocess.run(
        ["bash", str(REPO / "launch" / "slurm_multinode_gpu.sbatch"), "--config=smoke"],
        env=env, capture_output=True, text=True, timeout=60,
    )


def test_slurm_per_gpu_starts_one_task_per_gpu(tmp_path):
    out = _slurm(tmp_path, "per-gpu", "4")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("srun -N 2 -n 8 --ntasks-per-node=4 --cpus-per-task=6 ")
    assert "-m jaxcerv.main --config=smoke" in out.stdout


def test_slurm_per_gpu_refuses_more_tasks_than_gpus(tmp_path):
    out = _slurm(tmp_path, "per-gpu", "8")  # the header's 8 tasks with 4 GPUs requested
    assert out.returncode == 2 and "submit with --ntasks-per-node=4" in out.stderr
    assert out.stdout == ""


def test_slurm_per_node_hands_every_gpu_to_the_one_process(tmp_path):
    out = _slurm(tmp_path, "per-node", "1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("srun -N 2 -n 2 --ntasks-per-node=1 ")
    assert out.stdout.strip().endswith("JAX_LOCAL_DEVICE_IDS=0,1,2,3")  # not cut at a comma


def _tpu(tmp_path, *flags, **env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    _tool(bin_dir, "gcloud", FAKE_GCLOUD)
    home = tmp_path / "home"
    (home / "jaxcerv").mkdir(parents=True, exist_ok=True)
    full_env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(home), "RUN_ID": "r1",
                **env}
    out = subprocess.run(
        ["bash", str(REPO / "launch" / "tpu_vm_pod.sh"), "my-tpu", *flags],
        env=full_env, capture_output=True, text=True, timeout=60,
    )
    return out, home / "jaxcerv"


def test_tpu_refuses_a_workdir_on_local_disk(tmp_path):
    local = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True,
                           text=True).stdout.strip()
    if local.startswith(("nfs", "fuse", "lustre", "gpfs")):
        pytest.skip(f"{tmp_path} is on shared storage ({local}) here")
    out, remote = _tpu(tmp_path, "--config=smoke", f"--workdir={tmp_path / 'run'}")
    assert out.returncode == 3
    assert f"--workdir {tmp_path / 'run'} is on a {local} filesystem" in out.stderr
    assert not (remote / "logs").exists()  # nothing was started


def test_tpu_run_is_detached_with_a_log_per_worker(tmp_path):
    out, remote = _tpu(tmp_path, "--config=smoke", "--workdir=runs/x", LOCAL_WORKDIR="1")
    assert out.returncode == 0, out.stderr
    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    log = remote / "logs" / f"r1-{host}.log"
    assert f"{host}: jaxcerv/logs/r1-{host}.log" in out.stdout
    assert "tail -f jaxcerv/logs/r1-*.log" in out.stdout
    for _ in range(50):  # the detached process (here: no .venv, so it fails at once) wrote it
        if log.exists() and log.read_text():
            break
        time.sleep(0.1)
    assert ".venv/bin/python" in log.read_text()

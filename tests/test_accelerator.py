"""GPUs allocated but JAX on the CPU stops the run with one line (this machine has no GPU, so
its CPU-only jaxlib is exactly the case)."""

import os
import subprocess
import sys

import pytest
from conftest import REPO

from jaxcerv.runtime import parallel

_GPU_VARS = ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE")


@pytest.fixture
def no_gpus(monkeypatch):
    for k in (*_GPU_VARS, "JAX_PLATFORMS"):
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    "env, allocated",
    [
        ({}, None),
        ({"CUDA_VISIBLE_DEVICES": ""}, None),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, None),
        ({"SLURM_GPUS_ON_NODE": "0"}, None),
        ({"CUDA_VISIBLE_DEVICES": "0,1"}, "CUDA_VISIBLE_DEVICES=0,1"),
        ({"SLURM_JOB_GPUS": "2,3"}, "SLURM_JOB_GPUS=2,3"),
        ({"SLURM_GPUS_ON_NODE": "4"}, "SLURM_GPUS_ON_NODE=4"),
    ],
)
def test_allocated_gpus(no_gpus, env, allocated):
    for k, v in env.items():
        no_gpus.setenv(k, v)
    assert parallel.allocated_gpus() == allocated


def test_cpu_fallback_is_a_problem_unless_the_cpu_is_asked_for(no_gpus):
    assert parallel.accelerator_problem() is None  # nothing allocated
    no_gpus.setenv("CUDA_VISIBLE_DEVICES", "0")
    problem = parallel.accelerator_problem()
    assert problem is not None and "CUDA_VISIBLE_DEVICES=0" in problem
    assert "jaxcerv[cuda]" in problem
    no_gpus.setenv("JAX_PLATFORMS", "cpu")
    assert parallel.accelerator_problem() is None


def test_training_stops_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env.update(CUDA_VISIBLE_DEVICES="0", PYTHONPATH=path)
    out = subprocess.run(
        [sys.executable, "-m", "jaxcerv.main", "--config=smoke", f"--workdir={tmp_path / 'w'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("error: GPUs are allocated")
    assert "Traceback" not in out.stderr and not (tmp_path / "w" / "checkpoints").exists()

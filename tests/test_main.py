"""The command line end to end: a smoke run writes its results, and rerunning resumes."""

import json
import os
import subprocess
import sys

from conftest import REPO


def _main(workdir, *overrides):
    cmd = [sys.executable, "-m", "jaxcerv.main", "--config=configs/smoke.py"]
    cmd.append(f"--workdir={workdir}")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [*cmd, *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def _epochs(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_smoke_run_writes_results_then_resumes_from_its_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    first = _main(workdir, "--config.train.epochs=1")
    assert "epoch 1:" in first and "Resuming" not in first
    results = json.loads((workdir / "results.json").read_text())
    assert set(results["test"]) >= {"balanced_accuracy", "f1", "roc_auc", "one_minus_eer"}
    assert results["runtime"]["devices"] >= 1
    assert results["regulator"]["centre_error_patches"] >= 0
    assert (workdir / "report" / "index.html").exists()
    epoch1 = _epochs(workdir)
    assert [e["epoch"] for e in epoch1] == [1]

    # As if the first run had been killed after epoch 1 of 2: the same command, more epochs.
    second = _main(workdir, "--config.train.epochs=2")
    assert "Resuming from epoch 1" in second
    assert "epoch 1:" not in second and "epoch 2:" in second
    epochs = _epochs(workdir)
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs[0] == epoch1[0]  # epoch 1 was not trained again
    assert epochs[1]["step"] == 2 * epochs[0]["step"]  # the step counter came from the checkpoint

    # A finished run goes straight to evaluation.
    third = _main(workdir, "--config.train.epochs=2")
    assert "Resuming from epoch 2" in third and "epoch 2:" not in third
    assert [e["epoch"] for e in _epochs(workdir)] == [1, 2]

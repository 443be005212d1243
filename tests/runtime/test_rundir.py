"""The run folder: the workdir lock and the metrics log's resume semantics."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest

from jaxcerv.runtime.rundir import RunDir, RunError, acquire_lock, release_lock


def test_lock_is_exclusive_and_names_a_live_holder(tmp_path):
    run = RunDir(str(tmp_path / "w"))
    holder = subprocess.Popen(["sleep", "30"])
    try:
        os.makedirs(run.root)
        with open(run.lock, "w") as f:
            json.dump({"host": socket.gethostname(), "pid": holder.pid}, f)
        with pytest.raises(RunError, match=f"in use by pid {holder.pid} on this host"):
            acquire_lock(run)
    finally:
        holder.kill()
        holder.wait()
    acquire_lock(run)  # the holder died: stale, taken over
    assert json.load(open(run.lock)) == {"host": socket.gethostname(), "pid": os.getpid()}
    acquire_lock(run)  # re-entrant for the holder itself
    release_lock(run)
    assert not os.path.exists(run.lock)


def test_lock_from_another_host_is_not_taken_over(tmp_path):
    run = RunDir(str(tmp_path))
    with open(run.lock, "w") as f:
        json.dump({"host": "elsewhere", "pid": 1}, f)
    with pytest.raises(RunError, match="pid 1 on host elsewhere"):
        acquire_lock(run)
    release_lock(run)  # not ours: left alone
    assert os.path.exists(run.lock)


def test_truncate_metrics_keeps_epochs_up_to_the_resumed_one(tmp_path):
    run = RunDir(str(tmp_path))
    for e in (1, 2, 3):
        run.append_metrics({"epoch": e, "loss": float(e)})
    run.truncate_metrics(2)
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]
    run.truncate_metrics(0)
    assert run.read_metrics() == []


def test_fold_folders_in_numeric_order(tmp_path):
    for k in (10, 2, 0):
        os.makedirs(tmp_path / f"fold_{k}")
    os.makedirs(tmp_path / "fold_x")
    assert [f.root for f in RunDir(str(tmp_path)).folds()] == [
        str(tmp_path / f"fold_{k}") for k in (0, 2, 10)
    ]


def test_config_changes_split_extending_from_mixing_keys():
    from jaxcerv.runtime.rundir import config_changes

    recorded = {"grid_size": 4, "train": {"epochs": 2, "learning_rate": 1e-3, "patience": 4},
                "model": {"conv_features": [4, 8]}, "pretrain": {"epochs": 1},
                "data": {"data_dir": "", "augment": False}}
    new = {"grid_size": 5, "train": {"epochs": 3, "learning_rate": 1e-3, "patience": 4},
           "model": {"conv_features": (4, 8)}, "pretrain": {"epochs": 9},  # a tuple == its list
           "data": {"data_dir": "/cache", "augment": False, "extra": 1}}
    allowed, refused = config_changes(recorded, new)
    assert allowed == ["data.data_dir: '' -> '/cache'", "pretrain.epochs: 1 -> 9",
                       "train.epochs: 2 -> 3"]
    assert refused == ["data.extra: '(absent)' -> 1", "grid_size: 4 -> 5"]
    assert config_changes(recorded, recorded) == ([], [])


def test_holds_a_run_and_the_outputs_a_restart_deletes(tmp_path):
    run = RunDir(str(tmp_path))
    run.makedirs()
    (tmp_path / "config.json").write_text("{}")
    assert not run.holds_a_run()  # a config alone: a run that failed before its first epoch
    (tmp_path / "fold_1" / "checkpoints" / "best" / "3").mkdir(parents=True)
    assert run.holds_a_run()
    (tmp_path / "tfds").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    gone = {os.path.basename(p) for p in run.outputs()}
    assert gone == {"regulators", "eval", "heatmaps", "fold_1"}  # never tfds, config, lock

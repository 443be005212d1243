"""Settings are checked before anything is written: one line naming the setting, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs import annocerv, default, iarc_atlas, paper, paper_gpu, smoke
from jaxcerv.training import configcheck

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module", [default, paper, paper_gpu, smoke, iarc_atlas, annocerv])
def test_shipped_configs_pass(module):
    configcheck.check_config(module.get_config())


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("train.batch_size", 0, "integer >= 1"),
        ("train.epochs", 0, "integer >= 1"),
        ("train.learning_rate", float("nan"), "finite number > 0"),
        ("train.learning_rate", -1e-3, "finite number > 0"),
        ("patch_size", 5, ">= 8 (the 3 2x2 max-pools"),
        ("grid_size", 0, "integer >= 1"),
        ("data.val_fraction", 1.0, "[0, 1)"),
        ("data.num_folds", 1, "0 (one split) or >= 2"),
        ("regulator.mode", "iterativ", "one of ('iterative', 'fixed', 'none')"),
        ("regulator.lam", -0.1, ">= 0"),
        ("regulator.logit_decay", float("inf"), "finite number >= 0"),
        ("regulator.normalise", "logit", "one of ('weights', 'logits')"),
        ("model.dtype", "float16", "one of ('float32', 'bfloat16')"),
        ("eval.threshold_criterion", "best", "one of"),
        ("train.class_weight", "inverse", "one of ('none', 'balanced')"),
        ("data.augmentation.rotation", 90.0, "[0, 45] (small rotations only"),
        ("data.augmentation.blur", -1.0, "sigma in px in [0, 10]"),
        ("data.augmentation.scale", 1.5, "[0, 1)"),
        ("data.name", "annocerf", "one of ('synthetic_cervix', 'iarc_colposcopy_atlas', "
                                  "'cervix_folder', 'annocerv')"),
        ("data.swede_threshold", 0, "a whole Swede score in 1..10"),
        ("data.swede_threshold", 11, "a whole Swede score in 1..10"),
    ],
)
def test_out_of_range_settings_name_the_setting(key, value, words):
    config = default.get_config()
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(configcheck.ConfigError) as e:
        configcheck.check_config(config)
    assert str(e.value).startswith(f"config.{key}=") and words in str(e.value), str(e.value)


def test_patch_size_floor_follows_the_number_of_pools():
    config = default.get_config()
    config.model.conv_features = (8, 8)
    config.patch_size = 4  # two pools: 4 -> 2 -> 1
    configcheck.check_config(config)
    config.patch_size = 3
    with pytest.raises(configcheck.ConfigError, match=">= 4"):
        configcheck.check_config(config)


def test_mass_outside_on_logits_needs_sigmoid_weights():
    config = default.get_config()
    config.regulator.normalise, config.regulator.loss = "logits", "mass_outside"
    configcheck.check_config(config)
    config.model.family = "abmil"
    with pytest.raises(configcheck.ConfigError, match="abmil's attention is a softmax"):
        configcheck.check_config(config)
    config.regulator.normalise = "weights"
    configcheck.check_config(config)


def test_softmax_outside_reads_the_logits():
    config = default.get_config()
    config.regulator.loss = "softmax_outside"
    configcheck.check_config(config)
    config.regulator.normalise = "weights"
    with pytest.raises(configcheck.ConfigError, match="softmax_outside.*normalise=logits"):
        configcheck.check_config(config)


def test_resident_data_refuses_host_augmentation():
    config = default.get_config()
    config.data.resident, config.data.augment = True, True
    with pytest.raises(configcheck.ConfigError, match="data.resident=True.*data.augment=False"):
        configcheck.check_config(config)
    config.data.augment = False
    configcheck.check_config(config)


def test_fractions_must_leave_training_images():
    config = default.get_config()
    config.data.val_fraction, config.data.test_fraction = 0.5, 0.5
    with pytest.raises(configcheck.ConfigError, match="leaves no training images"):
        configcheck.check_config(config)


def test_unknown_key_suggests_the_close_ones():
    msg = configcheck.unknown_key_message("train.lr", default.get_config())
    assert msg.startswith("config.train.lr is not a setting")
    assert "config.train.learning_rate" in msg


@pytest.mark.parametrize(
    "flag, words",
    [
        ("--config.train.lr=1", "did you mean config.train.learning_rate"),
        ("--config.train.batch_size=0", "config.train.batch_size=0 is invalid"),
        ("--config.patch_size=5", "config.patch_size=5 is invalid"),
        ("--config.train.epochs=0", "config.train.epochs=0 is invalid"),
        ("--config.train.epochs=abc", "config.train.epochs"),
        ("--config.data.swede_threshold=0", "config.data.swede_threshold=0 is invalid"),
    ],
)
def test_main_answers_in_one_line_and_writes_nothing(tmp_path, flag, words):
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "jaxcerv.main", "--config=configs/smoke.py",
         f"--workdir={workdir}", flag],
        cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
    assert not workdir.exists()


def test_a_config_recorded_before_the_logit_decay_or_the_average_reads_as_without_them():
    """The recipe's logit decay and parameter average default to 5e-4 and 1 epoch, but a run
    recorded before either setting existed trained without it: filling them at today's
    defaults would let such a run resume (or count as finished) under the new recipe."""
    recorded = default.get_config().to_dict()
    del recorded["regulator"]["logit_decay"]
    del recorded["train"]["ema_epochs"]
    del recorded["pretrain"]["per_fold"]  # an added setting whose default is the old behaviour
    filled = configcheck.with_defaults(recorded)
    assert filled["regulator"]["logit_decay"] == 0.0 and filled["train"]["ema_epochs"] == 0.0
    assert filled["pretrain"]["per_fold"] is default.get_config().pretrain.per_fold
    assert default.get_config().regulator.logit_decay == 5e-4
    assert default.get_config().train.ema_epochs == 1.0
    # rerunning such a folder with today's defaults is a refused config change, not a resume
    from jaxcerv.runtime.rundir import config_changes
    _, refused = config_changes(filled, default.get_config().to_dict())
    assert refused == ["regulator.logit_decay: 0.0 -> 0.0005", "train.ema_epochs: 0.0 -> 1.0"]
    recorded["regulator"]["logit_decay"] = 1e-3
    assert configcheck.with_defaults(recorded)["regulator"]["logit_decay"] == 1e-3
    assert configcheck.with_defaults(default.get_config().to_dict()) == \
        default.get_config().to_dict()

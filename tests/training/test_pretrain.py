"""Contrastive pretraining: the loss against a numpy oracle, the lifecycle (metrics, resume), the
encoder file, per-fold encoders that never see their fold's test sessions, and how a classifier
starts from it (load, freeze)."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import session_folder_config, session_folders
from PIL import Image

from configs import default
from jaxcerv.model import networks as model_lib
from jaxcerv.runtime.rundir import RunDir, RunError
from jaxcerv.training import configcheck, pretrain, steps, train


def _nt_xent_oracle(z1, z2, t):
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        others = [k for k in range(2 * n) if k != i]
        logits = np.array([z[i] @ z[k] / t for k in others])
        total += -(z[i] @ z[j] / t - np.log(np.exp(logits).sum()))
    return total / (2 * n)


def test_nt_xent_matches_the_written_out_formula():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    loss, acc = pretrain.nt_xent(jnp.asarray(z1), jnp.asarray(z2), 0.3)
    assert float(loss) == pytest.approx(_nt_xent_oracle(z1, z2, 0.3), rel=1e-5)
    # Identical views far apart from each other: every anchor retrieves its own positive.
    same = np.eye(5, 7) * 10
    _, acc = pretrain.nt_xent(jnp.asarray(same), jnp.asarray(same), 0.3)
    assert float(acc) == 1.0


def test_views_avoid_the_letterbox():
    photo = np.zeros((1, 64, 64, 3), np.uint8)
    photo[0, 32:] = 180  # the top half is black letterbox
    v1, v2 = pretrain.sample_views(photo, 64, 8, np.random.default_rng(0), max_shift=2)
    assert v1.shape == v2.shape == (64, 8, 8, 3)
    assert (v1.reshape(64, -1).max(axis=1) > 100).all()


def _config(tmp_path, epochs=2):
    config = default.get_config()
    config.grid_size, config.patch_size = 2, 16
    config.model.conv_features = (4, 8)
    config.pretrain.images_dir = str(tmp_path / "photos")
    config.pretrain.epochs = epochs
    config.pretrain.steps_per_epoch = 2
    config.pretrain.batch_patches = 8
    config.pretrain.projection = (16, 8)
    return config


def _photos(tmp_path):
    folder = tmp_path / "photos" / "case_1"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(60, 256, (48, 40, 3), np.uint8)).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")


def test_pretraining_writes_metrics_resumes_and_saves_the_encoder(tmp_path, capsys):
    _photos(tmp_path)
    work = tmp_path / "w"
    first = pretrain.pretrain(_config(tmp_path, epochs=2), str(work))
    run = RunDir(str(work))
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]
    assert first["photographs"] == 4
    # A longer rerun resumes from epoch 2 rather than starting again.
    pretrain.pretrain(_config(tmp_path, epochs=3), str(work))
    assert "Resuming from epoch 2" in capsys.readouterr().out
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3]
    # The file's names and shapes are those of a PatchWiseModel's encoder: model.init_from
    # (model.load_init) replaces exactly the encoder and leaves the rest fresh.
    config = _config(tmp_path)
    net = model_lib.from_config(config)
    side = config.grid_size * config.patch_size
    params = net.init(jax.random.PRNGKey(1), jnp.zeros((1, side, side, 3), jnp.uint8))["params"]
    loaded = model_lib.load_init(params, str(work / pretrain.ENCODER_FILE))
    with np.load(work / pretrain.ENCODER_FILE) as z:
        assert sorted(z.files) == [f"encoder/Conv_{i}/{n}" for i in range(2)
                                   for n in ("bias", "kernel")]
        for i in range(2):
            np.testing.assert_array_equal(loaded["encoder"][f"Conv_{i}"]["kernel"],
                                          z[f"encoder/Conv_{i}/kernel"])
    np.testing.assert_array_equal(loaded["classifier"]["Dense_0"]["kernel"],
                                  params["classifier"]["Dense_0"]["kernel"])
    # A model with other encoder widths is refused in one line.
    config.model.conv_features = (4, 16)
    other = model_lib.from_config(config).init(
        jax.random.PRNGKey(1), jnp.zeros((1, side, side, 3), jnp.uint8))["params"]
    with pytest.raises(model_lib.InitError, match="encoder/Conv_1/.* has shape"):
        model_lib.load_init(other, str(work / pretrain.ENCODER_FILE))


def test_a_folder_without_photographs_is_one_line(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(RunError, match="no .jpg/.jpeg/.png files"):
        pretrain.pretrain(_config(tmp_path), str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_frozen_encoder_stays_put_for_the_first_steps_only():
    params = {"encoder": {"k": jnp.ones(3)}, "classifier": {"k": jnp.ones(2)}}
    tx = steps.freeze_encoder(optax.sgd(0.1), frozen_steps=2)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    history = []
    for _ in range(3):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        history.append(jax.tree.map(np.asarray, params))
    np.testing.assert_allclose(history[1]["encoder"]["k"], 1.0)
    np.testing.assert_allclose(history[1]["classifier"]["k"], 0.8)
    np.testing.assert_allclose(history[2]["encoder"]["k"], 0.9)


def _folder_config(tmp_path):
    config = session_folder_config(tmp_path)
    config.pretrain.images_dir = str(tmp_path / "photos")
    config.data.data_dir = str(tmp_path / "tfds")
    config.pretrain.per_fold = True
    return config


@pytest.fixture(scope="module")
def per_fold(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("per_fold")
    files = session_folders(tmp_path)
    # Another set's photographs in config.pretrain.extra_dirs: a flat folder (no session of the
    # labelled set: in every fold's pool) and one folder named after a labelled session (held
    # out wherever that session is a test session).
    rng = np.random.default_rng(2)
    extra = {"flat": ["e0.png", "e1.png"], "case_s0": ["e2.png"]}
    for folder, names in extra.items():
        (tmp_path / "other" / folder).mkdir(parents=True)
        for name in names:
            Image.fromarray(rng.integers(60, 256, (40, 48, 3), np.uint8)).save(
                tmp_path / "other" / folder / name)
    config = _folder_config(tmp_path)
    config.pretrain.extra_dirs = (str(tmp_path / "other"),)
    results = pretrain.pretrain(config, str(tmp_path / "w"))
    files["flat"] = extra["flat"]
    files["s0"] = files["s0"] + extra["case_s0"]
    return tmp_path, files, results


def test_per_fold_pretraining_never_sees_a_fold_test_session(per_fold):
    tmp_path, files, results = per_fold
    work = tmp_path / "w"
    with open(work / "splits.json") as f:
        folds = json.load(f)["folds"]
    assert len(results["folds"]) == len(folds) == 3
    kernels = []
    for k, fold in enumerate(folds):
        test_sessions = {image_id.split("/")[0].removeprefix("case_") for image_id in fold["test"]}
        expected = sum(len(v) for s, v in files.items() if s not in test_sessions)
        assert set(results["folds"][k]["held_out_sessions"]) == test_sessions
        assert results["folds"][k]["photographs"] == expected < 30
        with np.load(work / f"fold_{k}" / pretrain.ENCODER_FILE) as z:
            kernels.append(z["encoder/Conv_0/kernel"])
    assert results["encoder"] == str(work / "fold_{fold}" / pretrain.ENCODER_FILE)
    assert results["folders"] == {str(tmp_path / "photos"): 27, str(tmp_path / "other"): 3}
    assert not np.allclose(kernels[0], kernels[1])  # each fold trained on its own photographs


def test_each_fold_trains_from_its_own_encoder(per_fold, monkeypatch):
    tmp_path, _, results = per_fold
    config = _folder_config(tmp_path)
    config.model.init_from = results["encoder"]
    config.data.splits_file = str(tmp_path / "w" / "splits.json")
    config.train.epochs = 1
    config.train.batch_size = 2
    config.eval.batch_size = 2
    config.eval.num_heatmaps = 0
    configcheck.check_config(config)
    loaded = []
    load_init = model_lib.load_init
    monkeypatch.setattr(model_lib, "load_init",
                        lambda params, path: loaded.append(path) or load_init(params, path))
    train.train_and_evaluate(config, str(tmp_path / "classifier"))
    assert loaded == [str(tmp_path / "w" / f"fold_{k}" / pretrain.ENCODER_FILE) for k in range(3)]
    # A template whose fold-0 file is missing is refused by the config check; a later fold's
    # missing file by the fold that needs it, in one line.
    config.model.init_from = str(tmp_path / "nowhere" / "fold_{fold}" / "encoder.npz")
    with pytest.raises(configcheck.ConfigError, match="init_from"):
        configcheck.check_config(config)
    partial = tmp_path / "partial" / "fold_0"
    partial.mkdir(parents=True)
    shutil.copy(tmp_path / "w" / "fold_0" / pretrain.ENCODER_FILE, partial)
    config.model.init_from = str(tmp_path / "partial" / "fold_{fold}" / pretrain.ENCODER_FILE)
    configcheck.check_config(config)
    assert train.fold_config(config, 0).model.init_from == str(partial / pretrain.ENCODER_FILE)
    with pytest.raises(RunError, match=r"fold_1/encoder.npz \(fold 1\) does not exist"):
        train.fold_config(config, 1)


def test_per_fold_pretraining_refuses_photographs_it_cannot_assign_to_a_session():
    paths = [Path("photos/a.png"), Path("photos/case_s1/b.png")]
    folds = [{"test": np.array([0])}]
    with pytest.raises(RunError, match="1 of the dataset's 2 sessions"):
        pretrain.held_out_folds(paths, np.array(["s0", "s1"]), folds)
    (keep, test), = pretrain.held_out_folds(paths, np.array(["s1", "photos"]), folds)
    assert test == ["s1"] and keep.tolist() == [0]

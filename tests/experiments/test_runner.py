"""The suite runner on fake runs (shared splits, skipped finished rows, config checks) and the
small-data suite end to end on a tiny folder dataset."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
from conftest import scored_sessions, session_folder_config, session_folders
from jaxcerv.configs import smoke
from sklearn import metrics as skm

from jaxcerv.experiments import outputs, results, runner
from jaxcerv.model import networks as model_lib
from jaxcerv.runtime import rundir
from jaxcerv.runtime.rundir import RunDir, write_json
from jaxcerv.training import pretrain


def _fake_train(calls):
    """A stand-in for train_and_evaluate that writes what a 2-fold run writes: per fold
    results.json and eval/test.npz (probabilities from the config's seed and family)."""

    def train(config, workdir):
        calls.append((config, workdir))
        run = RunDir(workdir)
        run.makedirs()
        write_json(run.config, config.to_dict())
        if not config.data.splits_file:
            write_json(run.splits, {"folds": []})
        folds = []
        for k in range(2):
            fold = run.fold(k)
            fold.makedirs()
            quality = 2.0 if config.model.family == "patchwise" else 0.5
            y, p, s = scored_sessions(n=40, seed=k, quality=quality)
            ids = np.array([f"f{k}_{i}" for i in range(40)])
            np.savez(fold.eval_npz("test"), ids=ids, labels=y, probabilities=p,
                     sessions=np.char.add(f"f{k}", s))
            res = {"threshold": 0.5, "test": results.decision_metrics(y, p, p >= 0.5),
                   "runtime": {"devices": 1, "device_kind": "cpu"}}
            write_json(fold.results, res)
            for epoch, seconds in ((1, 10.0 + k), (2, 20.0)):
                fold.append_metrics({"epoch": epoch, "epoch_time_s": seconds})
            folds.append(res)
        write_json(run.results, {"folds": folds})

    return train


def test_runner_shares_splits_skips_finished_variants_and_tabulates_the_pooled_folds(tmp_path):
    config = smoke.get_config()
    config.data.num_folds = 2
    w = str(tmp_path / "w")
    calls = []
    variants = runner.run_suite("table1", config, w, ["lenet"], train_fn=_fake_train(calls))
    assert [v.name for v in variants] == ["proposed", "lenet"]
    assert calls[0][0].data.splits_file == ""
    assert calls[1][0].data.splits_file == os.path.abspath(os.path.join(w, "proposed",
                                                                        "splits.json"))
    assert calls[0][0].data.data_dir == calls[1][0].data.data_dir == os.path.abspath(
        os.path.join(w, "tfds"))
    runner.run_suite("table1", config, w, ["lenet"], train_fn=_fake_train(calls))
    assert len(calls) == 2  # both finished: skipped
    out = outputs.write_outputs("table1", w, variants, n_boot=50, seed=0)
    with open(out["csv"]) as f:
        rows = list(csv.DictReader(f))
    lenet = rows[1]
    y = np.concatenate([scored_sessions(40, k, 0.5)[0] for k in range(2)])
    p = np.concatenate([scored_sessions(40, k, 0.5)[1] for k in range(2)])
    assert float(lenet["roc_auc_pooled"]) == pytest.approx(skm.roc_auc_score(y, p))
    per_fold = [skm.roc_auc_score(*scored_sessions(40, k, 0.5)[:2]) for k in range(2)]
    assert float(lenet["roc_auc_mean"]) == pytest.approx(np.mean(per_fold))
    assert float(lenet["roc_auc_sd"]) == pytest.approx(np.std(per_fold, ddof=1))
    assert rows[0]["delta_auc"] == "" and float(lenet["delta_auc"]) < 0
    for key in ("md", "fig4a", "fig4b", "index"):
        assert os.path.getsize(out[key]) > 0
    assert "n/a" in open(out["md"]).read()  # no heatmap metrics from these runs
    # Train min: the epochs' times of both folds (10 + 20 and 11 + 20 s); the caption sums rows.
    assert float(lenet["train_min"]) == pytest.approx(61 / 60)
    assert "2 min for all rows on 1 x cpu." in open(out["md"]).read()


def test_a_diverged_row_is_recorded_named_in_the_table_and_the_suite_goes_on(tmp_path, capsys):
    """An ablation row that diverges is a result: the rows after it still train, a rerun does not
    train it again, and the table leaves it out but says why. The reference row diverging has
    nothing to be compared with: it stops the suite."""
    from jaxcerv.training.train import DivergenceError

    config = smoke.get_config()
    w = str(tmp_path / "w")
    calls, fake = [], _fake_train([])
    why = "training diverged at epoch 2, step 5 (learning rate 0.001): not finite"

    def train(config, workdir, diverging=("lenet",)):
        calls.append(os.path.basename(workdir))
        if os.path.basename(workdir) in diverging:
            raise DivergenceError(why)
        fake(config, workdir)

    variants = runner.run_suite("table1", config, w, ["lenet", "alexnet"], train_fn=train)
    assert calls == ["proposed", "lenet", "alexnet"]
    assert runner.diverged(w, "lenet") == why and runner.diverged(w, "alexnet") is None
    assert "lenet: diverged, recorded in" in capsys.readouterr().out
    runner.run_suite("table1", config, w, ["lenet", "alexnet"], train_fn=train)
    assert calls == ["proposed", "lenet", "alexnet"]  # nothing trained again
    assert "lenet: diverged earlier" in capsys.readouterr().out
    out = outputs.write_outputs("table1", w, variants, n_boot=20, seed=0)
    with open(out["csv"]) as f:
        assert [r["variant"] for r in csv.DictReader(f)] == ["proposed", "alexnet"]
    lenet = next(v for v in variants if v.name == "lenet")
    assert f"Diverged, no result: {lenet.label} ({why})" in open(out["md"]).read()

    with pytest.raises(DivergenceError):
        runner.run_suite("table1", config, str(tmp_path / "w2"), ["lenet"],
                         train_fn=lambda c, d: train(c, d, diverging=("proposed",)))


def test_runner_refuses_a_variant_folder_from_another_config(tmp_path):
    config = smoke.get_config()
    w = str(tmp_path / "w")
    calls = []
    runner.run_suite("table1", config, w, ["lenet"], train_fn=_fake_train(calls))
    config.model.width = 0.5  # read by lenet only: the proposed run stays valid
    with pytest.raises(rundir.RunError, match="lenet.*another config|another config.*lenet"):
        runner.run_suite("table1", config, w, ["lenet"], train_fn=_fake_train(calls))
    config.model.width = 1.0
    config.train.epochs = 3
    with pytest.raises(rundir.RunError, match="proposed"):
        runner.run_suite("table1", config, w, ["lenet"], train_fn=_fake_train(calls))


def test_a_row_without_regulator_stays_finished_when_the_spatial_loss_changes(tmp_path):
    config = smoke.get_config()
    w = tmp_path / "w"
    calls = []
    rows = ["no_regulator", "lenet"]
    runner.run_suite("table1", config, str(w), rows, train_fn=_fake_train(calls))
    config.regulator.loss, config.regulator.logit_decay = "paper", 0.0
    with pytest.raises(rundir.RunError, match="proposed"):  # the regulated row reads them
        runner.run_suite("table1", config, str(w), rows, train_fn=_fake_train(calls))
    shutil.rmtree(w / "proposed")
    runner.run_suite("table1", config, str(w), rows, train_fn=_fake_train(calls))
    assert [os.path.basename(d) for _, d in calls[3:]] == ["proposed"]  # the others stay finished
    config.train.epochs += 1  # a setting they do read
    shutil.rmtree(w / "proposed")
    with pytest.raises(rundir.RunError, match="no_regulator"):
        runner.run_suite("table1", config, str(w), rows, train_fn=_fake_train(calls))


def test_a_setting_added_since_a_row_ran_does_not_invalidate_it_at_its_default(tmp_path):
    config = smoke.get_config()
    w = tmp_path / "w"
    calls = []
    runner.run_suite("table1", config, str(w), ["lenet"], train_fn=_fake_train(calls))
    recorded = json.loads((w / "proposed" / "config.json").read_text())
    del recorded["pretrain"]["per_fold"]  # as written before the setting existed
    (w / "proposed" / "config.json").write_text(json.dumps(recorded))
    runner.run_suite("table1", config, str(w), ["lenet"], train_fn=_fake_train(calls))
    assert len(calls) == 2  # still finished
    config.pretrain.per_fold = True  # not the default: the old row did not run like this
    with pytest.raises(rundir.RunError, match="proposed"):
        runner.run_suite("table1", config, str(w), ["lenet"], train_fn=_fake_train(calls))


@pytest.mark.slow
def test_small_data_suite_pretrains_per_fold_first_and_every_row_tests_on_its_folds(
        tmp_path, monkeypatch):
    session_folders(tmp_path)
    config = session_folder_config(tmp_path)
    config.train.epochs = 1
    config.train.batch_size = config.eval.batch_size = 2
    config.eval.num_heatmaps = 0
    config.eval.bootstrap = 20
    w = tmp_path / "w"
    pretrained, loaded = [], []
    real_pretrain, real_load = pretrain.pretrain, model_lib.load_init
    monkeypatch.setattr(pretrain, "pretrain",
                        lambda c, d: pretrained.append(d) or real_pretrain(c, d))
    monkeypatch.setattr(model_lib, "load_init",
                        lambda params, path: loaded.append(path) or real_load(params, path))
    out = runner.run("small_data", config, str(w), ["handcrafted"])
    assert pretrained == [str(w / "pretrain")]
    # The proposed row's folds start from their own encoders, in fold order.
    assert loaded == [str(w / "pretrain" / f"fold_{k}" / "encoder.npz") for k in range(3)]
    folds = json.loads((w / "pretrain" / "splits.json").read_text())["folds"]
    held_out = json.loads((w / "pretrain" / "results.json").read_text())["folds"]
    for k, fold in enumerate(folds):  # each encoder held out exactly its fold's test cases
        assert set(held_out[k]["held_out_sessions"]) == {
            i.split("/")[0].removeprefix("case_") for i in fold["test"]}
        for name in ("proposed", "handcrafted"):  # and every row tests on those folds
            with np.load(w / name / f"fold_{k}" / "eval" / "test.npz") as z:
                assert sorted(z["ids"].astype(str)) == sorted(fold["test"])
    with open(out["csv"]) as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    parts = [np.load(w / "handcrafted" / f"fold_{k}" / "eval" / "test.npz") for k in range(3)]
    y = np.concatenate([p["labels"] for p in parts])
    p = np.concatenate([p["probabilities"] for p in parts])
    assert float(rows["handcrafted"]["roc_auc_pooled"]) == pytest.approx(
        skm.roc_auc_score(y, p))
    assert rows["handcrafted"]["train_min"] == ""  # no epochs, and not counted as 0
    minutes = sum(f["train_s_total"] for f in held_out) / 60
    assert f"pretraining took {minutes:.1f} min" in open(out["md"]).read()
    assert os.path.exists(w / "handcrafted" / "report" / "index.html")
    runner.run("small_data", config, str(w), ["handcrafted"])  # finished: nothing reruns
    assert len(pretrained) == 1 and len(loaded) == 3


def test_unknown_variant_is_one_line():
    with pytest.raises(ValueError, match="not in suite"):
        runner.run_suite("table1", smoke.get_config(), "/nonexistent", ["vgg99"],
                              train_fn=lambda c, w: None)

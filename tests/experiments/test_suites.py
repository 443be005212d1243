"""The experiment runner, its statistics against scikit-learn, the paper-protocol options and the
regulator variants, on tiny configs."""

from __future__ import annotations

import csv
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import session_folder_config, session_folders
from jaxcerv.configs import smoke
from sklearn import metrics as skm

from jaxcerv.experiments import suites as experiments
from jaxcerv.model import networks as model_lib
from jaxcerv.model import regulator
from jaxcerv.runtime.rundir import RunDir, write_json
from jaxcerv.training import configcheck, pretrain


def _rng_data(n=120, seed=0, quality=1.0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    probs = 1 / (1 + np.exp(-(quality * (2 * labels - 1) + rng.normal(size=n))))
    sessions = np.array([f"s{i // 2}" for i in range(n)])
    return labels, probs, sessions


def _row(name, labels, probs, sessions, threshold=0.5):
    return experiments.Row(
        variant=experiments.Variant(name, name), folds=[], ids=np.array([f"i{k}" for k in
                                                                        range(len(labels))]),
        labels=labels, probs=probs, decisions=(probs >= threshold).astype(int), sessions=sessions,
        weights=None)


def test_decision_metrics_match_scikit_learn():
    y, p, _ = _rng_data()
    d = (p >= 0.4).astype(int)
    got = experiments.decision_metrics(y, p, d)
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, d))
    assert got["f1"] == pytest.approx(skm.f1_score(y, d))
    assert got["precision"] == pytest.approx(skm.precision_score(y, d))
    assert got["recall"] == pytest.approx(skm.recall_score(y, d))
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    fpr, tpr, _ = skm.roc_curve(y, p)
    k = np.argmin(np.abs(fpr - (1 - tpr)))
    assert got["one_minus_eer"] == pytest.approx(1 - (fpr[k] + 1 - tpr[k]) / 2, abs=0.02)


def test_paired_auc_test_finds_a_real_difference_and_not_a_null_one():
    y, good, s = _rng_data(quality=3.0)
    _, bad, _ = _rng_data(seed=1, quality=0.0)
    ref = _row("ref", y, good, s)
    worse = experiments.paired_auc_test(ref, _row("worse", y, bad, s), n_boot=300)
    expected = skm.roc_auc_score(y, bad) - skm.roc_auc_score(y, good)
    assert worse["delta_auc"] == pytest.approx(expected)
    assert worse["p_value"] < 0.01 and worse["ci95"][1] < 0
    # A row scored by a monotone transform of the reference ranks identically: difference 0.
    same = experiments.paired_auc_test(ref, _row("same", y, good ** 3, s), n_boot=100)
    assert same["delta_auc"] == 0.0 and same["p_value"] == 1.0


def _shuffled(row, perm):
    """The same images in another id order (each fold's predictions pool in the order its
    test split lists them, so two rows rarely agree on the order)."""
    return experiments.Row(
        variant=row.variant, folds=[], ids=row.ids[perm], labels=row.labels[perm],
        probs=row.probs[perm], decisions=row.decisions[perm], sessions=row.sessions[perm],
        weights=None)


def test_paired_auc_test_pairs_images_by_id_not_by_position():
    """Two runs of the same images in different orders: the test must pair image with image.
    Paired by position, the shuffled copy of the reference would differ from it (its AUC
    against the reference's labels is about 0.5)."""
    y, good, s = _rng_data(quality=3.0)
    _, bad, _ = _rng_data(seed=1, quality=0.0)
    ref = _row("ref", y, good, s)
    perm = np.random.default_rng(7).permutation(len(y))
    same = experiments.paired_auc_test(ref, _shuffled(_row("same", y, good ** 3, s), perm),
                                       n_boot=100)
    assert same["delta_auc"] == 0.0 and same["p_value"] == 1.0 and same["ci95"] == (0.0, 0.0)
    in_order = experiments.paired_auc_test(ref, _row("worse", y, bad, s), n_boot=200)
    shuffled = experiments.paired_auc_test(ref, _shuffled(_row("worse", y, bad, s), perm),
                                           n_boot=200)
    assert shuffled == in_order  # the bootstrap too: the same sessions drawn, image by image
    assert shuffled["delta_auc"] == pytest.approx(skm.roc_auc_score(y, bad) -
                                                  skm.roc_auc_score(y, good))
    # Only the images both rows predicted count: drop a third of the row's, shuffled.
    keep = perm[: 2 * len(y) // 3]
    part = experiments.paired_auc_test(ref, _shuffled(_row("worse", y, bad, s), keep), 100)
    assert part["n_images"] == len(keep)
    assert part["delta_auc"] == pytest.approx(skm.roc_auc_score(y[keep], bad[keep]) -
                                              skm.roc_auc_score(y[keep], good[keep]))


def test_pooled_ci_resamples_whole_sessions():
    """Two sessions, each all one class: every resample that keeps both classes is the data
    itself (or a duplicate of it), so the interval collapses to the pooled value."""
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.9])
    row = _row("r", y, p, np.array(["a", "a", "b", "b"]))
    ci = experiments.pooled_ci(row, n_boot=50)
    value = experiments.decision_metrics(y, p, row.decisions)
    for k, _ in experiments.METRICS:
        assert ci[k] == pytest.approx((value[k], value[k]))


def test_normalised_scores_divide_by_the_best_row():
    recs = [{f"{k}_pooled": v for k, _ in experiments.METRICS} for v in (0.5, 0.8)]
    np.testing.assert_allclose(experiments.normalised_scores(recs)[:, 0], [0.5 / 0.8, 1.0])


def test_suites_start_with_the_proposed_model_and_table2_patches_tile_the_image():
    config = smoke.get_config()  # 4 x 28 = 112 px
    for suite in experiments.SUITES:
        variants = experiments.suite_variants(suite, config)
        assert variants[0].name == experiments.PROPOSED
        assert len({v.name for v in variants}) == len(variants)
        for v in variants:
            c = experiments.variant_config(config, v)
            if c.model.init_from == experiments.PRETRAINED:  # the suite's encoders, made first
                c.model.init_from = ""
            configcheck.check_config(c)
    for v in experiments.suite_variants("table2", config)[1:5]:
        c = experiments.variant_config(config, v)
        assert c.grid_size * c.patch_size == 112
    assert [experiments.variant_config(config, v).patch_size
            for v in experiments.suite_variants("table2", config)[1:5]] == [14, 28, 56, 112]


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
            y, p, s = _rng_data(n=40, seed=k, quality=2.0 if config.model.family == "patchwise"
                                else 0.5)
            ids = np.array([f"f{k}_{i}" for i in range(40)])
            np.savez(fold.eval_npz("test"), ids=ids, labels=y, probabilities=p,
                     sessions=np.char.add(f"f{k}", s))
            res = {"threshold": 0.5, "test": experiments.decision_metrics(y, p, p >= 0.5),
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
    variants = experiments.run_suite("table1", config, w, ["lenet"], train_fn=_fake_train(calls))
    assert [v.name for v in variants] == ["proposed", "lenet"]
    assert calls[0][0].data.splits_file == ""
    assert calls[1][0].data.splits_file == os.path.abspath(os.path.join(w, "proposed",
                                                                        "splits.json"))
    assert calls[0][0].data.data_dir == calls[1][0].data.data_dir == os.path.abspath(
        os.path.join(w, "tfds"))
    experiments.run_suite("table1", config, w, ["lenet"], train_fn=_fake_train(calls))
    assert len(calls) == 2  # both finished: skipped
    out = experiments.write_outputs("table1", w, variants, n_boot=50, seed=0)
    with open(out["csv"]) as f:
        rows = list(csv.DictReader(f))
    lenet = rows[1]
    y = np.concatenate([_rng_data(40, k, 0.5)[0] for k in range(2)])
    p = np.concatenate([_rng_data(40, k, 0.5)[1] for k in range(2)])
    assert float(lenet["roc_auc_pooled"]) == pytest.approx(skm.roc_auc_score(y, p))
    per_fold = [skm.roc_auc_score(*_rng_data(40, k, 0.5)[:2]) for k in range(2)]
    assert float(lenet["roc_auc_mean"]) == pytest.approx(np.mean(per_fold))
    assert float(lenet["roc_auc_sd"]) == pytest.approx(np.std(per_fold, ddof=1))
    assert rows[0]["delta_auc"] == "" and float(lenet["delta_auc"]) < 0
    for key in ("md", "fig4a", "fig4b", "index"):
        assert os.path.getsize(out[key]) > 0
    assert "n/a" in open(out["md"]).read()  # no heatmap metrics from these runs
    # Train min: the epochs' times of both folds (10 + 20 and 11 + 20 s); the caption sums rows.
    assert float(lenet["train_min"]) == pytest.approx(61 / 60)
    assert "2 min for all rows on 1 x cpu." in open(out["md"]).read()


def test_runner_refuses_a_variant_folder_from_another_config(tmp_path):
    config = smoke.get_config()
    w = str(tmp_path / "w")
    calls = []
    experiments.run_suite("table1", config, w, ["lenet"], train_fn=_fake_train(calls))
    config.model.width = 0.5  # read by lenet only: the proposed run stays valid
    with pytest.raises(experiments.RunError, match="lenet.*another config|another config.*lenet"):
        experiments.run_suite("table1", config, w, ["lenet"], train_fn=_fake_train(calls))
    config.model.width = 1.0
    config.train.epochs = 3
    with pytest.raises(experiments.RunError, match="proposed"):
        experiments.run_suite("table1", config, w, ["lenet"], train_fn=_fake_train(calls))


def test_a_setting_added_since_a_row_ran_does_not_invalidate_it_at_its_default(tmp_path):
    config = smoke.get_config()
    w = tmp_path / "w"
    calls = []
    experiments.run_suite("table1", config, str(w), ["lenet"], train_fn=_fake_train(calls))
    recorded = json.loads((w / "proposed" / "config.json").read_text())
    del recorded["pretrain"]["per_fold"]  # as written before the setting existed
    (w / "proposed" / "config.json").write_text(json.dumps(recorded))
    experiments.run_suite("table1", config, str(w), ["lenet"], train_fn=_fake_train(calls))
    assert len(calls) == 2  # still finished
    config.pretrain.per_fold = True  # not the default: the old row did not run like this
    with pytest.raises(experiments.RunError, match="proposed"):
        experiments.run_suite("table1", config, str(w), ["lenet"], train_fn=_fake_train(calls))


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
    out = experiments.run("small_data", config, str(w), ["handcrafted"])
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
    experiments.run("small_data", config, str(w), ["handcrafted"])  # finished: nothing reruns
    assert len(pretrained) == 1 and len(loaded) == 3


def test_unknown_variant_is_one_line():
    with pytest.raises(ValueError, match="not in suite"):
        experiments.run_suite("table1", smoke.get_config(), "/nonexistent", ["vgg99"],
                              train_fn=lambda c, w: None)


# ------------------------------------------------------------------------- protocol and checks


def test_config_checks_for_the_new_settings():
    def check(**overrides):
        c = smoke.get_config()
        for dotted, v in overrides.items():
            section, key = dotted.split("__")
            c[section][key] = v
        configcheck.check_config(c)

    with pytest.raises(configcheck.ConfigError, match="regulator.mode=none"):
        check(model__family="lenet")
    check(model__family="lenet", regulator__mode="none")
    with pytest.raises(configcheck.ConfigError, match="threshold_criterion=fixed"):
        check(data__val_fraction=0.0)
    check(data__val_fraction=0.0, eval__threshold_criterion="fixed")
    with pytest.raises(configcheck.ConfigError, match="init_from"):
        check(model__init_from="/nonexistent/weights.npz")
    with pytest.raises(configcheck.ConfigError, match="freeze_blocks"):
        check(model__freeze_blocks=5)
    with pytest.raises(configcheck.ConfigError, match="regulator.loss"):
        check(regulator__loss="two_sided")


def test_eighty_twenty_protocol_trains_fixed_epochs_and_tests_the_last(tmp_path):
    """No validation set: the last epoch is tested at the fixed threshold."""
    from jaxcerv.training import train
    config = smoke.get_config()
    config.data.val_fraction = 0.0
    config.eval.threshold_criterion, config.eval.threshold = "fixed", 0.3
    config.train.patience = 1  # would stop at once if a validation score drove it
    config.train.epochs = 3
    w = str(tmp_path / "w")
    results = train.train_and_evaluate(config, w)
    assert results["best_epoch"] == results["epochs_run"] == 3
    assert results["threshold"] == 0.3 and "val" not in results
    splits = json.load(open(os.path.join(w, "splits.json")))["folds"][0]
    assert splits["val"] == [] and len(splits["train"]) + len(splits["test"]) == 48
    with np.load(os.path.join(w, "eval", "test.npz")) as z:
        pred = (z["probabilities"] >= 0.3).astype(int)
        assert results["test"]["recall"] == pytest.approx(skm.recall_score(z["labels"], pred))


# ------------------------------------------------------------------------- regulator variants


def test_one_sided_spatial_loss_charges_only_weight_outside_the_regulator():
    rng = np.random.default_rng(0)
    w, s = rng.random((2, 4, 5)), rng.random((2, 4, 5))

    def mm(x):
        lo, hi = x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True)
        return (x - lo) / (hi - lo)

    got = regulator.one_sided_spatial_loss(jnp.asarray(w), jnp.asarray(s))
    np.testing.assert_allclose(got, (mm(w) * (1 - mm(s))).sum(axis=(1, 2)), rtol=1e-5)
    # A map equal to 1 where the regulator peaks and 0 elsewhere costs nothing one-sided; the
    # paper's loss still charges every patch below the peak.
    peak = (mm(s) == 1).astype(np.float64)
    assert float(regulator.one_sided_spatial_loss(jnp.asarray(peak), jnp.asarray(s))[0]) == 0.0
    assert float(regulator.spatial_loss(jnp.asarray(peak), jnp.asarray(s))[0]) > 10


@pytest.mark.parametrize("grid", [10, 84])
def test_g0_fraction_gives_every_grid_the_same_gaussian_relative_to_the_image(grid):
    g0 = np.asarray(regulator.initial_params((grid, grid), 0.25))
    assert np.sqrt(g0[2]) / grid == pytest.approx(0.25)
    assert np.sqrt(g0[4]) / grid == pytest.approx(0.25)
    np.testing.assert_allclose(g0[:2], [grid / 2, grid / 2])
    paper = np.asarray(regulator.initial_params((grid, grid)))
    assert paper[2] == pytest.approx(grid / 2)  # the paper's G0 shrinks as the grid grows


def test_mass_outside_loss_is_the_share_of_mass_outside_and_a_flat_map_is_not_free():
    rng = np.random.default_rng(1)
    w, s = rng.random((3, 4, 5)), rng.random((3, 4, 5))
    norm_s = (s - s.min(axis=(1, 2), keepdims=True)) / np.ptp(s, axis=(1, 2), keepdims=True)
    expected = 20 * (w * (1 - norm_s)).sum(axis=(1, 2)) / w.sum(axis=(1, 2))
    got = regulator.mass_outside_loss(jnp.asarray(w), jnp.asarray(s))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    flat = np.full((1, 4, 5), 0.7)
    assert float(regulator.one_sided_spatial_loss(jnp.asarray(flat), jnp.asarray(s[:1]))[0]) == 0
    assert float(regulator.mass_outside_loss(jnp.asarray(flat), jnp.asarray(s[:1]))[0]) == (
        pytest.approx(20 * np.mean(1 - norm_s[0]), rel=1e-5))


def test_a_collapsed_heatmap_has_no_mass_in_cervix_instead_of_stopping_the_evaluation():
    from jaxcerv.evaluation import metrics
    w = np.zeros((2, 4, 4))
    w[1, 1:3, 1:3] = 1.0
    cervix = np.tile([2.0, 2.0, 1.0, 0.0, 1.0], (2, 1))
    got = metrics.mass_in_cervix(w, cervix)
    assert np.isnan(got[0]) and got[1] == pytest.approx(1.0)


def test_min_max_of_a_map_constant_but_for_an_ulp_is_zero_not_huge():
    x = np.full((1, 2, 2), 0.23419932, np.float32)
    x[0, 0, 0] = np.nextafter(x[0, 0, 0], np.float32(1))
    assert float(jnp.max(regulator.min_max(jnp.asarray(x)))) == 0.0
    y = np.array([[[0.0, 1.0], [3.0, 2.0]]], np.float32)
    np.testing.assert_allclose(regulator.min_max(jnp.asarray(y)), y / 3.0)
    # The spatial loss of Eq. 6 is then bounded by the patch count, never negative.
    w = jnp.asarray(np.random.default_rng(0).random((1, 2, 2)))
    assert 0 <= float(regulator.spatial_loss(w, jnp.asarray(x))[0]) <= 4


def test_caption_names_each_width_once_with_all_its_input_sizes():
    """Four whole-image families at their published sizes, one width: one sentence, not four."""
    rows = []
    for family in ("patchwise", "lenet", "alexnet", "vgg16", "inception"):
        config = smoke.get_config()
        config.model.family, config.model.input_size, config.model.width = family, 0, 1.0
        rows.append(experiments.Row(
            variant=experiments.Variant(family, family), folds=[{}], ids=np.arange(4),
            labels=np.array([0, 1, 0, 1]), probs=np.full(4, 0.5), decisions=np.zeros(4),
            sessions=np.arange(4), weights=None, config=config.to_dict()))
    text = experiments.caption("table1", rows, n_boot=10)
    assert text.count("Whole-image CNNs") == 1
    assert "input 32/224/227/299 px, channels x1 of the published net." in text

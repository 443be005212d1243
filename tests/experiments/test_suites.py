"""The suite definitions (every row a valid config, Table 2's patches tile the image), the
paper-protocol options and the regulator variants, on tiny configs."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from jaxcerv.configs import paper, smoke
from sklearn import metrics as skm

from jaxcerv.experiments import suites
from jaxcerv.model import regulator
from jaxcerv.runtime.rundir import flatten_config
from jaxcerv.training import configcheck


def test_suites_start_with_the_proposed_model_and_table2_patches_tile_the_image():
    config = smoke.get_config()  # 4 x 28 = 112 px
    for suite in suites.SUITES:
        variants = suites.suite_variants(suite, config)
        assert variants[0].name == suites.PROPOSED
        assert len({v.name for v in variants}) == len(variants)
        for v in variants:
            c = suites.variant_config(config, v)
            if c.model.init_from == suites.PRETRAINED:  # the suite's encoders, made first
                c.model.init_from = ""
            configcheck.check_config(c)
    for v in suites.suite_variants("table2", config)[1:5]:
        c = suites.variant_config(config, v)
        assert c.grid_size * c.patch_size == 112
    assert [suites.variant_config(config, v).patch_size
            for v in suites.suite_variants("table2", config)[1:5]] == [14, 28, 56, 112]


def test_regulator_rows_differ_from_the_recipe_in_the_one_setting_they_name():
    """Each recipe ablation row is the recipe with one change, whatever the base config (here
    the paper's), and the paper-as-printed row has the paper's method."""
    base = paper.get_config()
    rows = {v.name: suites.variant_config(base, v) for v in suites.regulator(base)}

    def differs(name):
        return {k for k in suites.RECIPE
                if rows[name][k.split(".")[0]][k.split(".")[1]] != suites.RECIPE[k]}

    assert differs("recommended") == set()
    assert differs("recipe_mean") == {"model.aggregation"}
    assert differs("recipe_into_encoder") == {"regulator.reaches"}
    assert differs("recipe_no_decay") == {"regulator.logit_decay"}
    assert differs("recipe_no_ema") == {"train.ema_epochs"}
    assert differs("recipe_eq6") == {"regulator.loss", "regulator.logit_decay"}
    assert rows["recipe_eq6"].regulator.loss == "paper"
    assert differs("recipe_mass_outside") == {"regulator.loss", "regulator.logit_decay"}
    assert rows["recipe_mass_outside"].regulator.loss == "mass_outside"
    assert rows["recommended"].regulator.loss == "softmax_outside"
    printed = rows["paper_as_printed"]
    assert (printed.model.aggregation, printed.regulator.reaches,
            printed.regulator.normalise) == ("mean", "encoder", "weights")


@pytest.mark.parametrize("base", [paper.get_config, smoke.get_config])
def test_recipe_suite_rows_change_only_the_setting_they_name(base):
    """The factor screen is the recipe (whatever the base) plus one setting per row: every
    other config value equals the reference row's, and each row's change is a real change."""
    rows = {v.name: flatten_config(suites.variant_config(base(), v).to_dict())
            for v in suites.recipe(base())}
    reference = rows.pop(suites.PROPOSED)
    assert {k: reference[k] for k in suites.RECIPE} == suites.RECIPE
    expected = {"no_feature_norm": {"model.feature_norm"},
                "weight_bias_0": {"model.weight_bias_init"},
                "lr_1e-3": {"train.learning_rate"},
                "warmup_cosine": {"train.schedule", "train.warmup_epochs",
                                  "train.final_lr_fraction"},
                "grad_clip": {"train.grad_clip"}, "adam_eps": {"train.adam_eps"},
                "lambda_warmup": {"regulator.lam_hold_epochs", "regulator.lam_ramp_epochs"}}
    assert set(rows) == set(expected)
    for name, row in rows.items():
        assert {k for k in row if row[k] != reference[k]} == expected[name], name


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


def test_mass_outside_from_logits_is_the_weights_loss_and_stays_finite_where_they_underflow():
    rng = np.random.default_rng(2)
    z, s = rng.normal(0, 3, (3, 4, 5)), rng.random((3, 4, 5))
    w = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(regulator.mass_outside_from_logits(jnp.asarray(z), jnp.asarray(s)),
                               regulator.mass_outside_loss(jnp.asarray(w), jnp.asarray(s)),
                               rtol=1e-5)
    # every weight below float32's smallest number: sigmoid(z) ~ exp(z), so the share is the
    # softmax of z (numpy oracle), where the weights' own loss is 0 / 0
    deep = z - 300.0
    norm_s = (s - s.min(axis=(1, 2), keepdims=True)) / np.ptp(s, axis=(1, 2), keepdims=True)
    e = np.exp(deep - deep.max(axis=(1, 2), keepdims=True))
    expected = 20 * (e / e.sum(axis=(1, 2), keepdims=True) * (1 - norm_s)).sum(axis=(1, 2))
    got = regulator.mass_outside_from_logits(jnp.asarray(deep, jnp.float32), jnp.asarray(s))
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    # the weights themselves are all 0 there: their loss can only read the collapse as free
    under = jnp.asarray(1 / (1 + np.exp(-deep)), jnp.float32)
    np.testing.assert_array_equal(regulator.mass_outside_loss(under, jnp.asarray(s)), 0.0)

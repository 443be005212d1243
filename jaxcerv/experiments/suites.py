"""The experiment suites: which rows (variants of the base config) each suite trains.

  jaxcerv experiments --suite=table1 --config=benchmark --workdir=runs/table1
  jaxcerv experiments --suite=regulator --config=benchmark --workdir=runs/reg [--variants=a,b]
  jaxcerv experiments --suite=recipe --config=benchmark --workdir=runs/recipe
  jaxcerv experiments --suite=small_data --config=iarc_atlas --workdir=runs/small

Every row is the base config plus a few dotted overrides; ``runner`` trains and tests each in
``W/<row>/``, ``results`` collects them, ``tables``, ``figures`` and ``outputs`` write
``W/<suite>.md`` / ``.csv`` / ``_fig*.png`` / ``.html``.

A new suite or row joins here: a function ``config -> [Variant, ...]`` (the first row is the
proposed model, every paired test's reference) registered in ``SUITES``. A new model family joins
as a row whose overrides select it; anything ``train.train_and_evaluate`` (or another entry that
writes the same run layout, as ``handcrafted.run_baseline`` does) can run, the runner can tabulate.

Rows whose ``model.init_from`` is ``PRETRAINED`` start from the suite's own encoders: before any
row, the runner pretrains one per fold into ``W/pretrain/`` (each without its fold's test
sessions), so no row is tested on a case that an encoder saw.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

PROPOSED = "proposed"
# model.init_from of a row that starts from the suite's per-fold pretrained encoders.
PRETRAINED = "<the suite's per-fold pretrained encoders>"
PRETRAIN_DIR = "pretrain"
# Steps the pretrained encoder is held still: two epochs of the atlas recipe (about 50 training
# images per fold, batch 8), so the fresh weight MLP and classifier settle before it moves.
PRETRAINED_FREEZE_STEPS = 14
NO_REGULATOR = {"regulator.mode": "none"}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row: a name (its folder), a label (its table row), config overrides and the entry
    point that runs it (``train``: train.train_and_evaluate; ``handcrafted``:
    handcrafted.run_baseline)."""

    name: str
    label: str
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    entry: str = "train"


def proposed() -> Variant:
    return Variant(PROPOSED, "Proposed (patch-wise + iterative regulator)")


def _nearest_divisor(side: int, target: float, minimum: int = 8) -> int:
    """The patch size nearest ``target`` that tiles ``side`` px exactly (and is >= minimum)."""
    divisors = [d for d in range(minimum, side + 1) if side % d == 0]
    return min(divisors, key=lambda d: (abs(d - target), d))


def table1(config: ml_collections.ConfigDict) -> list[Variant]:
    """Table 1: the patch-wise model against the whole-image CNNs the paper compares."""
    no_reg = NO_REGULATOR
    whole = [
        Variant("lenet", "LeNet (Vasudha'18)", {"model.family": "lenet", **no_reg}),
        Variant("alexnet", "CaffeNet/AlexNet (Xu'17)", {"model.family": "alexnet", **no_reg}),
        Variant("alexnet_crop1200", "CaffeNet/AlexNet, Crop 1200",
                {"model.family": "alexnet", "data.center_crop": 0.5, **no_reg}),
        *(Variant(f"vgg16_fz{n}", f"VGG16 FZ{n}",
                  {"model.family": "vgg16", "model.freeze_blocks": n, **no_reg})
          for n in (1, 2, 3, 4)),
        Variant("inception", "Inception-style", {"model.family": "inception", **no_reg}),
    ]
    return [
        proposed(),
        Variant("no_regulator", "Patch-wise, no regulator", no_reg),
        Variant("abmil", "Gated-attention MIL (ABMIL), not in the paper",
                {"model.family": "abmil", **no_reg}),
        *whole,
    ]


def table2(config: ml_collections.ConfigDict) -> list[Variant]:
    """Table 2: patch sizes that tile the same image, and concatenation instead of the mean."""
    side = config.grid_size * config.patch_size
    rows = [proposed()]
    for factor in (0.5, 1, 2, 4):
        p = _nearest_divisor(side, factor * config.patch_size)
        rows.append(Variant(f"patch{p}", f"Patch {p} px ({factor:g}x), G0 = 1/4 of the side",
                            {"patch_size": p, "grid_size": side // p,
                             "regulator.g0_fraction": 0.25}))
    rows.append(Variant("concat", "Concatenation instead of mean",
                        {"model.aggregation": "concat"}))
    return rows


# The recommended recipe's settings (configs/default.py has them as its defaults, so every config
# that imports it trains them); written out so that a row is the recipe whatever the base config.
NO_WARMUP: dict[str, Any] = {"regulator.lam_hold_epochs": 0.0, "regulator.lam_ramp_epochs": 0.0}
RECIPE: dict[str, Any] = {"model.aggregation": "weighted_mean", "regulator.reaches": "weight_mlp",
                          "regulator.normalise": "logits", "regulator.loss": "softmax_outside",
                          "regulator.logit_decay": 5e-4, "train.learning_rate": 3e-4,
                          **NO_WARMUP, "model.feature_norm": True, "model.weight_bias_init": -2.0,
                          "train.schedule": "constant", "train.grad_clip": 0.0,
                          "train.adam_eps": 1e-8, "train.ema_epochs": 1.0}
# The paper's choices of the same settings (Eq. 4 with the mean, Eq. 6 on the sigmoid weights
# with its gradient through the encoder); the learning rate stays the base config's.
PAPER_METHOD: dict[str, Any] = {"model.aggregation": "mean", "regulator.reaches": "encoder",
                                "regulator.normalise": "weights", "regulator.loss": "paper",
                                "regulator.logit_decay": 0.0, "train.ema_epochs": 0.0,
                                **NO_WARMUP}
# The recipe before softmax_outside (docs/recipe.md): Eq. 6 on the logits, nothing on their range.
EQ6_RECIPE: dict[str, Any] = {**RECIPE, "regulator.loss": "paper", "regulator.logit_decay": 0.0}
# The earlier recipe (docs/recipe.md): the paper's mean, Eq. 6 on the logits into the encoder,
# held off by a lambda warm-up (0 for 3 epochs, then a 2-epoch ramp).
WARMUP_RECIPE: dict[str, Any] = {**PAPER_METHOD, "regulator.normalise": "logits",
                                 "train.learning_rate": 3e-4, "regulator.lam_hold_epochs": 3.0,
                                 "regulator.lam_ramp_epochs": 2.0}


def regulator(config: ml_collections.ConfigDict) -> list[Variant]:
    """The regulator ablations: fixed / none, what Eq. 6 fits and which spatial loss."""
    return [
        Variant(PROPOSED, "Proposed, the config's settings (the recommended recipe in "
                "configs/default.py and the configs that import it; the paper as printed in "
                "configs/paper.py)"),
        Variant("paper_as_printed", "Paper as printed (mean aggregation, Eq. 6 on the weights "
                "into the encoder, lambda from the first step; lr 1e-3)",
                {**PAPER_METHOD, "train.learning_rate": 1e-3}),
        Variant("recommended", "Recommended (weighted mean, softmax share outside the regulator "
                "plus logit decay 5e-4, into the weight MLP only, lr 3e-4, the parameters' "
                "moving average over 1 epoch tested)", dict(RECIPE)),
        Variant("recipe_no_decay", "Recommended without the logit decay",
                {**RECIPE, "regulator.logit_decay": 0.0}),
        Variant("recipe_no_ema", "Recommended, testing the raw parameters instead of their "
                "moving average", {**RECIPE, "train.ema_epochs": 0.0}),
        Variant("recipe_eq6", "Recommended with Eq. 6 on the logits instead of the softmax "
                "share, no logit decay (the recipe before 2026-12-06, now with the moving "
                "average)", dict(EQ6_RECIPE)),
        Variant("recipe_mean", "Recommended with the paper's mean aggregation",
                {**RECIPE, "model.aggregation": "mean"}),
        Variant("recipe_into_encoder", "Recommended with the spatial loss into the encoder",
                {**RECIPE, "regulator.reaches": "encoder"}),
        Variant("warmup_recipe", "Earlier recipe (mean, Eq. 6 on the logits into the encoder, "
                "lambda 0 for 3 epochs then a 2-epoch ramp)", dict(WARMUP_RECIPE)),
        Variant("kernel_flat_top", "Recommended, flat-top (generalised Gaussian) kernel",
                {**RECIPE, "regulator.kernel": "flat_top"}),
        Variant("kernel_mixture", "Recommended, two-Gaussian mixture kernel",
                {**RECIPE, "regulator.kernel": "mixture"}),
        Variant("stop_kl", "Recommended, refitting stops after 3 fits within KL 0.01",
                {**RECIPE, "regulator.stop_kl": 0.01}),
        Variant("recipe_mass_outside", "Earlier recommended, share of weight mass outside the "
                "regulator (read from the logits) instead of Eq. 6",
                {**EQ6_RECIPE, "regulator.loss": "mass_outside"}),
        Variant("fixed", "Fixed regulator (G0 for every image)", {"regulator.mode": "fixed"}),
        Variant("no_regulator", "No regulator", NO_REGULATOR),
        # The paper's method with one change each (the settings these rows were measured on).
        Variant("logits", "Paper's method, Eq. 6 on the min-max normalised logits (no sigmoid "
                "saturation), lr 1e-3", {**PAPER_METHOD, "regulator.normalise": "logits",
                                         "train.learning_rate": 1e-3}),
        Variant("logits_lr3e-4", "Paper's method, Eq. 6 on the logits, lr 3e-4",
                {**PAPER_METHOD, "regulator.normalise": "logits", "train.learning_rate": 3e-4}),
        Variant("one_sided", "Paper's method, one-sided spatial loss",
                {**PAPER_METHOD, "regulator.loss": "one_sided"}),
        Variant("one_sided_logits", "Paper's method, one-sided spatial loss on the logits",
                {**PAPER_METHOD, "regulator.loss": "one_sided", "regulator.normalise": "logits"}),
        Variant("one_sided_lam0.1", "Paper's method, one-sided spatial loss, lambda 0.1",
                {**PAPER_METHOD, "regulator.loss": "one_sided", "regulator.lam": 0.1}),
        Variant("mass_outside", "Paper's method, share of weight mass outside the regulator",
                {**PAPER_METHOD, "regulator.loss": "mass_outside"}),
        Variant("fit_weights", "Fitted to the raw weights (the paper's fit)",
                {"regulator.fit_on": "weights"}),
        Variant("fit_normalised", "Fitted to the min-max normalised weights",
                {"regulator.fit_on": "normalised"}),
    ]


def recipe(config: ml_collections.ConfigDict) -> list[Variant]:
    """The recipe with one training setting changed per row: the settings suspected of holding
    the plateau or killing the encoder (docs/recipe.md), so each is kept or dropped on numbers."""
    return [
        Variant(PROPOSED, "Recommended recipe", dict(RECIPE)),
        Variant("no_feature_norm", "Recipe without the LayerNorm before the classifier",
                {**RECIPE, "model.feature_norm": False}),
        Variant("weight_bias_0", "Recipe, weight-MLP output bias initialised at 0 (not -2)",
                {**RECIPE, "model.weight_bias_init": 0.0}),
        Variant("lr_1e-3", "Recipe at learning rate 1e-3", {**RECIPE, "train.learning_rate": 1e-3}),
        Variant("warmup_cosine", "Recipe, 2-epoch linear warm-up then cosine decay to 10%",
                {**RECIPE, "train.schedule": "warmup_cosine", "train.warmup_epochs": 2.0,
                 "train.final_lr_fraction": 0.1}),
        Variant("grad_clip", "Recipe, global gradient norm clipped at 1",
                {**RECIPE, "train.grad_clip": 1.0}),
        Variant("adam_eps", "Recipe, Adam epsilon 1e-5 (not 1e-8)",
                {**RECIPE, "train.adam_eps": 1e-5}),
        Variant("lambda_warmup", "Recipe, lambda 0 for 3 epochs then a 2-epoch ramp",
                {**RECIPE, "regulator.lam_hold_epochs": 3.0, "regulator.lam_ramp_epochs": 2.0}),
    ]


def small_data(config: ml_collections.ConfigDict) -> list[Variant]:
    """Few training images: per-fold pretrained encoders against training from scratch."""
    pre = {"model.init_from": PRETRAINED, "train.freeze_encoder_steps": PRETRAINED_FREEZE_STEPS}
    return [
        Variant(PROPOSED, "Proposed, encoder pretrained per fold (the small-data recipe)", pre),
        Variant("scratch", "Proposed from scratch"),
        Variant("scratch_plain", "Proposed from scratch, no class weights, no augmentation",
                {"train.class_weight": "none", "data.augment": False}),
        Variant("pretrained_lam0.001", "Proposed, pretrained, lambda 0.001",
                {**pre, "regulator.lam": 0.001}),
        Variant("abmil_pretrained", "ABMIL from the pretrained encoder, not in the paper",
                {**pre, "model.family": "abmil", **NO_REGULATOR}),
        Variant("handcrafted", "Hand-crafted colour and texture + logistic regression",
                entry="handcrafted"),
    ]


COLOUR = "colour"  # real_heatmaps' explanation reference: the whiteness heuristic
CNN = "cnn"
# What every trained row shares, so the whole suite fits 40 minutes on 2 CPU cores (measured in
# docs/real_data.md): 12 x 12 patches of 16 px (the 3:2 photograph letterboxed into 192 px),
# few epochs. The whole-image CNN sees the same 192 px at 128 px with a quarter of the channels.
REAL_BUDGET: dict[str, Any] = {
    "grid_size": 12,
    "patch_size": 16,
    "train.epochs": 6,
    "train.patience": 3,
    "eval.num_heatmaps": 0,
}


def real_heatmaps(config: ml_collections.ConfigDict) -> list[Variant]:
    """Heatmaps against an expert's outlines on real photographs (``experiments.real_heatmaps``
    adds the untrained heatmaps and writes the tables). The trained rows (and the colour row's
    classifier); the first is the proposed model,
    the cheap and reference rows next, so a suite cut short still has its references."""
    del config
    no_reg = {"regulator.mode": "none"}
    return [
        Variant(PROPOSED, "Paper model (patch-wise + iterative regulator)",
                {**REAL_BUDGET, **PAPER_METHOD}),
        Variant(COLOUR, "Colour heuristic: whiteness map (classifier: hand-crafted colour "
                "and texture + logistic regression)", dict(REAL_BUDGET), entry="handcrafted"),
        Variant(CNN, "Whole-image CNN, AlexNet-style (heatmap: input gradient)",
                {**REAL_BUDGET, "model.family": "alexnet", "model.input_size": 128,
                 "model.width": 0.25, **no_reg}),
        Variant("recipe", "Recommended recipe (the default: weighted mean, softmax share "
                "outside the regulator plus logit decay, into the weight MLP only, lr 3e-4, "
                "the parameters' moving average tested)",
                {**REAL_BUDGET, **RECIPE}),
        Variant("recommended", "Earlier stand-in: Eq. 6 on the logits, lr 3e-4",
                {**REAL_BUDGET, **PAPER_METHOD, "regulator.normalise": "logits",
                 "train.learning_rate": 3e-4}),
        Variant("warmup_recipe", "Earlier recipe: the stand-in with lambda 0 for 3 epochs, "
                "then a 2-epoch ramp", {**REAL_BUDGET, **WARMUP_RECIPE}),
        Variant("no_regulator", "Paper model, no regulator",
                {**REAL_BUDGET, **PAPER_METHOD, **no_reg}),
        Variant("abmil", "ABMIL (heatmap: its attention)",
                {**REAL_BUDGET, "model.family": "abmil", **no_reg}),
    ]


# Suite name -> its rows; the first row of each is the proposed model.
SUITES: dict[str, Callable[[ml_collections.ConfigDict], list[Variant]]] = {
    "table1": table1,
    "table2": table2,
    "regulator": regulator,
    "recipe": recipe,
    "small_data": small_data,
    "real_heatmaps": real_heatmaps,
}


def suite_variants(suite: str, config: ml_collections.ConfigDict) -> list[Variant]:
    """The rows of a suite; the first is the proposed model (every paired test's reference)."""
    if suite not in SUITES:
        raise ValueError(f"--suite={suite!r}: use one of {tuple(SUITES)}")
    return SUITES[suite](config)


def variant_config(base: ml_collections.ConfigDict, variant: Variant) -> ml_collections.ConfigDict:
    """``base`` with the variant's dotted overrides applied (a copy)."""
    config = ml_collections.ConfigDict(base.to_dict())
    for dotted, value in variant.overrides.items():
        *parents, leaf = dotted.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config

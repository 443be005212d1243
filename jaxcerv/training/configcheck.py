"""Config validation before anything is written: ranges, enums and the override keys.

Every problem is one line naming the setting and what to use instead (``ConfigError``); ``main``
prints it and exits with status 2, leaving the workdir untouched.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable, Iterable
from typing import Any

from jaxcerv.data.images import RESIZE_POLICIES
from jaxcerv.evaluation.metrics import THRESHOLD_CRITERIA
from jaxcerv.model import regulator
from jaxcerv.model.conv import IMPLS
from jaxcerv.model.losses import CLASS_WEIGHTS
from jaxcerv.model.networks import (
    AGGREGATIONS,
    FAMILIES,
    REACHES,
    WHOLE_IMAGE,
    init_from_for_fold,
)
from jaxcerv.training.steps import SCHEDULES

DATASETS = ("synthetic_cervix", "iarc_colposcopy_atlas", "cervix_folder", "annocerv")
DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
    """One line: the setting, its value, and what to set instead."""


def _get(config: Any, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def has_key(config: Any, dotted: str) -> bool:
    """Whether ``config`` has the dotted setting (what ``--config.<dotted>=`` may override)."""
    try:
        _get(config, dotted)
    except (KeyError, AttributeError, TypeError):  # TypeError: a key below a leaf value
        return False
    return True


def _rules(config: Any) -> list[tuple[str, Callable[[Any], bool], str]]:
    """(setting, predicate, what it must be) for every checked setting."""
    features = "model.conv_features"
    layers = len(tuple(_get(config, features))) if has_key(config, features) else 3
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    is_num = lambda v: isinstance(v, int | float) and not isinstance(v, bool)  # noqa: E731
    fraction = lambda v: is_num(v) and 0 <= v < 1  # noqa: E731
    positive_ints = lambda v: len(tuple(v)) > 0 and all(is_int(x) and x >= 1 for x in v)  # noqa: E731
    return [
        ("seed", is_int, "an integer"),
        ("grid_size", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        (
            "patch_size",
            lambda v: is_int(v) and v >= 2**layers,
            f"an integer >= {2**layers} (the {layers} 2x2 max-pools of the encoder must leave a "
            "pixel)",
        ),
        ("data.name", lambda v: v in DATASETS, f"one of {DATASETS}"),
        ("data.num_images", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        ("data.resize", lambda v: v in RESIZE_POLICIES, f"one of {RESIZE_POLICIES}"),
        ("data.swede_threshold", lambda v: is_int(v) and 1 <= v <= 10,
         "a whole Swede score in 1..10 (label = swede_score >= it; 5 refers or biopsies)"),
        ("data.restore_aspect", lambda v: isinstance(v, bool), "True or False"),
        ("data.val_fraction", lambda v: is_num(v) and 0 <= v < 1, "a fraction in [0, 1)"),
        ("data.test_fraction", lambda v: is_num(v) and 0 <= v < 1, "a fraction in [0, 1)"),
        ("data.num_folds", lambda v: is_int(v) and (v == 0 or v >= 2), "0 (one split) or >= 2"),
        ("data.num_workers", lambda v: is_int(v) and v >= 0, "an integer >= 0"),
        ("data.prefetch", lambda v: is_int(v) and v >= 0, "an integer >= 0"),
        ("data.augment", lambda v: isinstance(v, bool), "True or False"),
        ("data.balanced_sampling", lambda v: isinstance(v, bool), "True or False"),
        ("data.resident", lambda v: isinstance(v, bool), "True or False"),
        ("data.augmentation.flip", lambda v: isinstance(v, bool), "True or False"),
        ("data.augmentation.colour", fraction, "a number in [0, 1)"),
        ("data.augmentation.rotation", lambda v: is_num(v) and 0 <= v <= 45,
         "a number of degrees in [0, 45] (small rotations only: the view is always from below)"),
        ("data.augmentation.scale", fraction, "a number in [0, 1)"),
        ("data.augmentation.translate", lambda v: is_num(v) and 0 <= v <= 0.5,
         "a fraction of the side in [0, 0.5]"),
        ("data.augmentation.white_balance", fraction, "a number in [0, 1)"),
        ("data.augmentation.illumination", lambda v: is_num(v) and 0 <= v <= 1,
         "a number in [0, 1]"),
        ("data.augmentation.blur", lambda v: is_num(v) and 0 <= v <= 10,
         "a Gaussian sigma in px in [0, 10]"),
        ("model.conv_features", positive_ints, "a non-empty list of integers >= 1"),
        ("model.weight_hidden", lambda v: all(is_int(x) and x >= 1 for x in v),
         "a list of integers >= 1"),
        ("model.classifier_hidden", lambda v: all(is_int(x) and x >= 1 for x in v),
         "a list of integers >= 1"),
        ("model.aggregation", lambda v: v in AGGREGATIONS, f"one of {AGGREGATIONS}"),
        ("model.dropout", lambda v: is_num(v) and 0 <= v < 1, "a fraction in [0, 1)"),
        ("model.dtype", lambda v: v in DTYPES, f"one of {DTYPES}"),
        ("model.remat_chunk", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        ("model.conv_impl", lambda v: v in IMPLS, f"one of {IMPLS}"),
        ("model.family", lambda v: v in FAMILIES, f"one of {FAMILIES}"),
        ("model.input_size", lambda v: is_int(v) and v >= 0, "0 (published size) or >= 1 px"),
        ("model.width", lambda v: is_num(v) and 0 < v <= 8, "a multiplier in (0, 8]"),
        ("model.freeze_blocks", lambda v: is_int(v) and 0 <= v <= 4,
         "an integer in 0..4 (VGG16's FZ1-FZ4)"),
        ("model.attention_hidden", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        ("model.init_from",
         lambda v: isinstance(v, str) and (not v or os.path.isfile(init_from_for_fold(v, 0))),
         "'' or an existing .npz file (see jaxcerv.model.networks.load_init), or a path with "
         "{fold} that exists for fold 0 (one encoder per fold: jaxcerv pretrain with "
         "config.pretrain.per_fold)"),
        ("data.center_crop", lambda v: is_num(v) and 0 < v <= 1, "a fraction in (0, 1]"),
        ("regulator.loss", lambda v: v in regulator.LOSSES, f"one of {regulator.LOSSES}"),
        ("regulator.g0_fraction", lambda v: is_num(v) and 0 <= v <= 2,
         "0 (the paper's G0) or a fraction of the image side in (0, 2]"),
        ("eval.threshold", lambda v: is_num(v) and 0 <= v <= 1, "a probability in [0, 1]"),
        ("regulator.mode", lambda v: v in regulator.MODES, f"one of {regulator.MODES}"),
        ("regulator.lam", lambda v: is_num(v) and math.isfinite(v) and v >= 0,
         "a finite number >= 0"),
        ("regulator.logit_decay", lambda v: is_num(v) and math.isfinite(v) and v >= 0,
         "a finite number >= 0"),
        ("regulator.fit_on", lambda v: v in regulator.FIT_ON, f"one of {regulator.FIT_ON}"),
        ("regulator.kernel", lambda v: v in regulator.KERNELS, f"one of {regulator.KERNELS}"),
        ("regulator.stop_kl", lambda v: is_num(v) and v >= 0, "0 (off) or a KL > 0"),
        ("regulator.stop_epochs", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        ("regulator.thaw_kl", lambda v: is_num(v) and v >= 0, "0 (never) or a KL > 0"),
        ("regulator.normalise", lambda v: v in regulator.NORMALISE,
         f"one of {regulator.NORMALISE}"),
        ("regulator.reaches", lambda v: v in REACHES, f"one of {REACHES}"),
        ("train.batch_size", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        ("train.epochs", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        ("train.learning_rate", lambda v: is_num(v) and math.isfinite(v) and v > 0,
         "a finite number > 0"),
        ("train.patience", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        ("train.schedule", lambda v: v in SCHEDULES, f"one of {SCHEDULES}"),
        ("train.warmup_epochs", lambda v: is_num(v) and v >= 0, "a number of epochs >= 0"),
        ("train.final_lr_fraction", lambda v: is_num(v) and 0 <= v <= 1, "a fraction in [0, 1]"),
        ("train.grad_clip", lambda v: is_num(v) and v >= 0, "0 (off) or a norm > 0"),
        ("train.adam_eps", lambda v: is_num(v) and v > 0, "a number > 0"),
        ("train.ema_epochs", lambda v: is_num(v) and math.isfinite(v) and v >= 0,
         "0 (off: the raw parameters are tested) or the average's horizon in epochs > 0"),
        ("regulator.lam_hold_epochs", lambda v: is_num(v) and v >= 0, "a number of epochs >= 0"),
        ("regulator.lam_ramp_epochs", lambda v: is_num(v) and v >= 0, "a number of epochs >= 0"),
        ("train.class_weight", lambda v: v in CLASS_WEIGHTS, f"one of {CLASS_WEIGHTS}"),
        ("train.freeze_encoder_steps", lambda v: is_int(v) and v >= 0, "an integer >= 0"),
        ("train.max_bce", lambda v: is_num(v) and v > 0, "a number > 0"),
        ("train.log_every_steps", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        ("train.restart", lambda v: isinstance(v, bool), "True or False"),
        ("pretrain.epochs", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        ("pretrain.steps_per_epoch", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        ("pretrain.batch_patches", lambda v: is_int(v) and v >= 2, "an integer >= 2"),
        ("pretrain.learning_rate", lambda v: is_num(v) and math.isfinite(v) and v > 0,
         "a finite number > 0"),
        ("pretrain.temperature", lambda v: is_num(v) and math.isfinite(v) and v > 0,
         "a finite number > 0"),
        ("pretrain.projection", positive_ints, "a non-empty list of integers >= 1"),
        ("pretrain.per_fold", lambda v: isinstance(v, bool), "True or False"),
        ("handcrafted.c", lambda v: is_num(v) and math.isfinite(v) and v > 0,
         "a finite number > 0"),
        ("eval.batch_size", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        ("eval.threshold_criterion", lambda v: v in (*THRESHOLD_CRITERIA, "fixed"),
         f"one of {(*THRESHOLD_CRITERIA, 'fixed')}"),
        ("eval.num_heatmaps", lambda v: is_int(v) and v >= 0, "an integer >= 0"),
        ("eval.bootstrap", lambda v: is_int(v) and v >= 0, "an integer >= 0"),
    ]


def check_config(config: Any) -> None:
    """Raise ConfigError for the first setting out of range (in the order of the rules)."""
    for key, ok, want in _rules(config):
        if not has_key(config, key):
            continue
        value = _get(config, key)
        try:
            good = bool(ok(value))
        except TypeError:
            good = False
        if not good:
            raise ConfigError(f"config.{key}={value!r} is invalid: it must be {want}")
    d = config.data
    if has_key(config, "model.family") and config.model.family in WHOLE_IMAGE and \
            config.regulator.mode != "none":
        raise ConfigError(
            f"config.model.family={config.model.family!r} has no patch weights, so no spatial "
            f"regulator: set config.regulator.mode=none (it is {config.regulator.mode!r})"
        )
    if has_key(config, "regulator.normalise") and config.regulator.normalise == "logits" and \
            config.regulator.loss == "mass_outside" and config.model.family == "abmil":
        raise ConfigError(
            "config.regulator.loss=mass_outside with normalise=logits reads sigmoid weights from "
            "their logits, and model.family=abmil's attention is a softmax: use "
            "normalise=weights for abmil"
        )
    if has_key(config, "regulator.normalise") and config.regulator.loss == "softmax_outside" \
            and config.regulator.normalise != "logits":
        raise ConfigError(
            "config.regulator.loss=softmax_outside is a softmax over the weights' logits: set "
            f"config.regulator.normalise=logits (it is {config.regulator.normalise!r})"
        )
    if d.get("resident") and d.augment:
        raise ConfigError(
            "config.data.resident=True trains on the images as stored on the device, and "
            "augmentation runs on the host: set config.data.augment=False or "
            "config.data.resident=False"
        )
    if d.val_fraction == 0 and config.eval.threshold_criterion != "fixed":
        raise ConfigError(
            "config.data.val_fraction=0 leaves no validation set to choose the threshold on: set "
            "config.eval.threshold_criterion=fixed (and config.eval.threshold), or a "
            "val_fraction > 0"
        )
    if d.num_folds == 0 and d.val_fraction + d.test_fraction >= 1:
        raise ConfigError(
            f"config.data.val_fraction + config.data.test_fraction = "
            f"{d.val_fraction + d.test_fraction:g} leaves no training images: keep the sum below 1"
        )


def config_keys(config: Any, prefix: str = "") -> Iterable[str]:
    """Every dotted leaf key of a ConfigDict (what ``--config.a.b=`` can set)."""
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if hasattr(value, "items"):
            yield from config_keys(value, dotted + ".")
        else:
            yield dotted


def unknown_key_message(override: str, config: Any) -> str:
    """One line for ``--config.<override>=...`` naming a key the config does not have, with the
    likeliest intended keys: an abbreviation (``lr`` = ``learning_rate``), then a prefix, then
    the closest spellings."""
    keys = list(config_keys(config))
    *parent, leaf = override.split(".")

    def initials(k: str) -> str:
        return "".join(w[0] for w in k.rsplit(".", 1)[-1].split("_") if w)

    def same_parent(k: str) -> bool:
        return k.split(".")[:-1] == parent

    ranked = [k for k in keys if same_parent(k) and initials(k) == leaf]
    ranked += [k for k in keys if same_parent(k) and k.rsplit(".", 1)[-1].startswith(leaf)]
    ranked += difflib.get_close_matches(override, keys, n=3, cutoff=0.5)
    close = list(dict.fromkeys(ranked))[:3]
    hint = f"; did you mean {' or '.join('config.' + k for k in close)}?" if close else ""
    return f"config.{override} is not a setting of this config{hint}"


# Settings added with a default that is not the behaviour before them: the value a run recorded
# before the setting existed ran with.
BEFORE_ADDED = {"regulator.logit_decay": 0.0, "train.ema_epochs": 0.0}


def with_defaults(recorded: dict) -> dict:
    """A recorded config (``config.json``) with every setting added since filled in at its
    default, or for a setting in ``BEFORE_ADDED`` at the value it had before it existed: adding
    one neither invalidates a finished experiment row nor counts as a config change on a rerun,
    and a run made before the recipe's logit decay existed stays a run without it."""
    from jaxcerv.configs import default

    defaults = default.get_config().to_dict()
    for dotted, before in BEFORE_ADDED.items():
        section, key = dotted.split(".")
        if key not in recorded.get(section, {}):
            defaults[section][key] = before

    def fill(node: dict, defaults: dict) -> dict:
        out = dict(defaults)
        for k, v in node.items():
            out[k] = fill(v, defaults[k]) if isinstance(v, dict) and isinstance(
                defaults.get(k), dict) else v
        return out

    return fill(recorded, defaults)

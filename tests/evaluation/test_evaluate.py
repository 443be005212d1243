"""Evaluation protocol: the threshold comes from validation only; test metrics at it."""

from __future__ import annotations

import ml_collections
import numpy as np

from jaxcerv.evaluation import evaluate


def _config(criterion: str = "youden") -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {"seed": 0, "eval": {"threshold_criterion": criterion, "bootstrap": 20}}
    )


def _split(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    probs = np.clip(0.3 * labels + rng.uniform(0, 0.7, n), 0, 1)
    return {"labels": labels, "probabilities": probs, "sessions": np.arange(n).astype(str)}


def test_threshold_depends_only_on_validation():
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(0)
    val, test = _split(rng, 40), _split(rng, 30)
    got = evaluate.test_metrics(_config(), val, test)
    # Oracle: sklearn's ROC on validation; Youden's J picks the cut, applied to test.
    fpr, tpr, cuts = roc_curve(val["labels"], val["probabilities"])
    best_cut = cuts[np.argmax(tpr - fpr)]
    assert np.sum(val["probabilities"] >= got["threshold"]) == np.sum(
        val["probabilities"] >= best_cut
    )
    # Changing (even inverting) the test labels and scores moves no threshold.
    flipped = {**test, "labels": 1 - test["labels"], "probabilities": 1 - test["probabilities"]}
    again = evaluate.test_metrics(_config(), val, flipped)
    assert again["threshold"] == got["threshold"]
    assert again["val"] == got["val"]
    pred = test["probabilities"] >= got["threshold"]
    tp = np.sum(pred & (test["labels"] == 1))
    assert got["test"]["recall"] == tp / np.sum(test["labels"] == 1)


def test_bce_matches_sklearn_log_loss():
    from sklearn.metrics import log_loss

    rng = np.random.default_rng(1)
    logits = rng.normal(0, 4, 50)
    labels = rng.integers(0, 2, 50)
    want = log_loss(labels, 1 / (1 + np.exp(-logits)))
    np.testing.assert_allclose(evaluate.bce(logits, labels), want, rtol=1e-9)


def test_explanation_counts_the_images_each_metric_uses():
    grid = 4
    w = np.full((3, grid, grid), 0.1)
    w[0, 1, 1] = 1.0  # image 0: top patch on its lesion
    w[1, 3, 3] = 1.0  # image 1: top patch two patches from its lesion
    lesion = np.zeros((3, grid, grid), bool)
    lesion[0, 1, 1] = lesion[1, 0, 0] = True  # image 2 (normal) has none
    cervix = np.tile([2.0, 2.0, 1.0, 0.0, 1.0], (3, 1))
    test = {"weights": w, "truth_lesion": lesion, "truth_cervix": cervix,
            "regulators": cervix + [0.3, 0.4, 0, 0, 0], "labels": np.array([1, 1, 0]),
            "sessions": np.array(["a", "b", "b"])}
    out = evaluate.explanation(_config(), test)
    within = out["pointing_game_within_1_patch"]
    assert within["value"] == 0.5 and within["n_images"] == 2 and within["n_sessions"] == 2
    assert np.isclose(out["fitted_centre_error_patches"]["value"], 0.5)  # hypot(0.3, 0.4)
    assert out["mass_in_cervix_normal"]["n_images"] == 1
    none = evaluate.explanation(_config(), {**test, "truth_lesion": np.zeros_like(lesion)})
    assert none["pointing_game_within_1_patch"]["value"] is None


def test_with_records_carries_the_annocerv_truth_in_split_order():
    from jaxcerv.data import pipeline

    n, grid = 5, 3
    region = np.random.default_rng(0).uniform(0, 1, (n, grid, grid)).astype(np.float32)
    status = np.array(["closed", "empty", "unclosable", "closed", "empty"])
    records = pipeline.Records(
        ids=np.array([f"i{k}" for k in range(n)]), labels=np.array([1, 0, 1, 0, 1]),
        grades=np.full(n, -1), sessions=np.array(list("aabbc")),
        days_to_diagnosis=np.full(n, np.nan, np.float32), truth_region=region,
        region_status=status, region_usable=status != "unclosable",
        swede_scores=np.array([6, 2, 7, 4, 9]), label_note="Swede score >= 5",
    )
    idx = np.array([3, 0, 2])
    out = evaluate.with_records({"probabilities": np.zeros(3)}, records, idx)
    np.testing.assert_array_equal(out["truth_region"], region[idx])
    assert out["truth_region"].shape == (3, grid, grid)
    assert list(out["region_status"]) == ["closed", "closed", "unclosable"]
    np.testing.assert_array_equal(out["region_usable"], [True, True, False])
    np.testing.assert_array_equal(out["swede_scores"], [4, 6, 7])
    assert "truth_cervix" not in out and "truth_lesion" not in out


def _augmenting_config(augment: bool) -> ml_collections.ConfigDict:
    from jaxcerv.configs import default

    config = default.get_config()
    config.eval.batch_size = 4
    config.data.augment = augment
    aug = config.data.augmentation  # every term strong: no image comes through unchanged
    aug.flip, aug.colour, aug.rotation, aug.translate, aug.blur = True, 0.5, 30.0, 0.2, 1.5
    return config


def test_evaluation_never_augments_even_when_training_does():
    """Validation and test predictions with data.augment=True are those of the raw images: the
    oracle is each stored image itself, passed through an eval step that returns its pixels."""
    import jax.numpy as jnp

    from jaxcerv.runtime import parallel

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 16, 24, 3), np.uint8)  # not square: a flip shows
    source = [{"image": im, "label": k % 2, "grade": 0} for k, im in enumerate(images)]
    indices = np.array([7, 2, 9, 0, 4, 5, 1])  # 7 images: a padded last batch of 4
    mesh = parallel.make_mesh()

    def eval_step(params, batch):
        return {"pixels": batch["image"].astype(jnp.float32)}

    on = _augmenting_config(True)
    # The augmentation is visible: a training batch of the same images differs from them.
    (train_batch, *_) = evaluate.process_batches(on, source, indices, batch_size=4, epoch=1,
                                                 train=True)
    assert not any(np.array_equal(train_batch["image"][j], images[i]) for j in range(4)
                   for i in indices)
    got = evaluate.predict_split(on, eval_step, None, source, indices, mesh)
    off = evaluate.predict_split(_augmenting_config(False), eval_step, None, source, indices,
                                 mesh)
    np.testing.assert_array_equal(got["pixels"], images[indices].astype(np.float32))
    np.testing.assert_array_equal(got["pixels"], off["pixels"])


def test_test_metrics_adds_the_real_region_block_when_predictions_carry_regions():
    rng = np.random.default_rng(3)
    val, test = _split(rng, 20), _split(rng, 12)
    grid = 4
    region = np.zeros((12, grid, grid))
    region[:, :2, :2] = 1.0
    weights = rng.uniform(size=(12, grid, grid)) + region
    usable = np.arange(12) % 4 != 0  # 3 unusable outlines
    got = evaluate.test_metrics(_config(), val, {**test, "weights": weights,
                                                 "truth_region": region, "region_usable": usable})
    block = got["explanation_region"]
    assert block["masks"]["n_usable"] == 9 and block["masks"]["n_unusable"] == 3
    assert block["region_auc"]["n_images"] == 9 and block["region_auc"]["n_skipped"] == 3
    assert block["region_auc"]["value"] > 0.9
    # No heatmap (a whole-image CNN): no block, the classification stands alone.
    plain = evaluate.test_metrics(_config(), val, {**test, "truth_region": region,
                                                   "region_usable": usable})
    assert "explanation_region" not in plain

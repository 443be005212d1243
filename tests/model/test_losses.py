"""Class weights and the weighted BCE against hand-computed and scikit-learn oracles."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from jaxcerv.model import losses


def test_balanced_weights_match_scikit_learn():
    labels = np.array([1] * 61 + [0] * 14)
    expected = compute_class_weight("balanced", classes=np.array([0, 1]), y=labels)
    np.testing.assert_allclose(losses.class_weights(labels, "balanced"), expected, rtol=1e-6)
    # Both classes then carry the same total weight, and the mean weight is 1.
    w = losses.class_weights(labels, "balanced")[labels]
    assert w[labels == 0].sum() == pytest.approx(w[labels == 1].sum())
    assert w.mean() == pytest.approx(1.0)


def test_none_is_unweighted_and_bad_input_is_one_line():
    np.testing.assert_array_equal(losses.class_weights(np.array([0, 1, 1]), "none"), [1, 1])
    with pytest.raises(ValueError, match="both classes"):
        losses.class_weights(np.array([1, 1, 1]), "balanced")
    with pytest.raises(ValueError, match="one of"):
        losses.class_weights(np.array([0, 1]), "inverse")


def test_weighted_bce_is_the_hand_computed_weighted_cross_entropy():
    logits = jnp.array([2.0, -1.0, 0.5, -3.0])
    labels = jnp.array([1, 0, 0, 1])
    weights = np.array([3.0, 0.5])
    p = 1 / (1 + np.exp(-np.asarray(logits)))
    y = np.asarray(labels)
    expected = -np.where(y == 1, 0.5 * np.log(p), 3.0 * np.log(1 - p))
    got = losses.weighted(losses.classification_loss(logits, labels), labels, weights)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)


def test_balanced_weights_move_the_optimal_constant_off_the_prior():
    """Under weighting the best constant prediction is 0.5, not the 61/75 prior: a model that
    only learns the prior gains nothing."""
    labels = jnp.array([1] * 61 + [0] * 14)
    weights = losses.class_weights(np.asarray(labels), "balanced")
    grid = jnp.linspace(-3, 3, 601)
    mean_loss = [float(losses.weighted(losses.classification_loss(jnp.full(75, z), labels),
                                       labels, weights).mean()) for z in grid]
    best = float(grid[int(np.argmin(mean_loss))])
    assert abs(best) < 0.011
    plain = [float(losses.classification_loss(jnp.full(75, z), labels).mean()) for z in grid]
    assert float(grid[int(np.argmin(plain))]) == pytest.approx(np.log(61 / 14), abs=0.011)


def test_lambda_warm_up_holds_at_zero_then_ramps_linearly_to_lambda():
    """Hand values: hold 10 steps, ramp 4: 0 up to step 10, then 1/4, 2/4, ... of lambda."""
    lam_at = [float(losses.lambda_at(s, 0.2, 10, 4)) for s in (0, 9, 10, 11, 12, 14, 100)]
    np.testing.assert_allclose(lam_at, [0, 0, 0, 0.05, 0.1, 0.2, 0.2], rtol=1e-6)
    hold_only = [float(losses.lambda_at(s, 0.2, 10, 0)) for s in (9, 10)]
    np.testing.assert_allclose(hold_only, [0.0, 0.2])
    assert losses.lambda_at(3, 0.2) == 0.2  # the paper: a constant, not a traced value

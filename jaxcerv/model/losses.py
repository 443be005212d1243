"""The paper's losses: classification (Eq. 2) and the combined objective (Eq. 11), and the class
weights that keep a small, imbalanced training set from collapsing onto its prior."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

CLASS_WEIGHTS = ("none", "balanced")


def classification_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Eq. 2 as intended: the standard binary cross-entropy (the printed form has a typo)."""
    return optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32))


def class_weights(labels: np.ndarray, mode: str) -> np.ndarray:
    """(w_0, w_1): the weight of each class's examples in the loss.

    "balanced" is n / (2 n_c) (scikit-learn's convention): both classes then carry half the total
    weight, so a model that outputs the prior no longer minimises the loss; the weights average 1
    over the training set, so the learning rate keeps its meaning. "none" is (1, 1).
    """
    if mode not in CLASS_WEIGHTS:
        raise ValueError(f"class weight mode {mode!r}: use one of {CLASS_WEIGHTS}")
    if mode == "none":
        return np.ones(2, np.float32)
    counts = np.bincount(np.asarray(labels, np.int64).reshape(-1), minlength=2)[:2]
    if counts.min() == 0:
        raise ValueError(f"balanced class weights need both classes, got counts {counts.tolist()}")
    return (counts.sum() / (2.0 * counts)).astype(np.float32)


def weighted(per_example: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """Each example's loss times its class's weight (``weights`` = (w_0, w_1))."""
    return per_example * jnp.asarray(weights, per_example.dtype)[labels.astype(jnp.int32)]


def combined_loss(bce: jax.Array, spatial: jax.Array, lam: float, mode: str) -> jax.Array:
    """Eq. 11: BCE + lambda * spatial loss; the ablation without a regulator keeps the BCE only."""
    return bce if mode == "none" else bce + lam * spatial


def lambda_at(step: jax.Array, lam: float, hold_steps: float = 0, ramp_steps: float = 0):
    """lambda of Eq. 11 at a train step: 0 for the first ``hold_steps`` (the classifier learns
    before the regulator pulls), then a linear ramp to ``lam`` over ``ramp_steps``; ``lam``
    itself when both are 0 (the paper)."""
    if hold_steps <= 0 and ramp_steps <= 0:
        return lam
    t = (jnp.asarray(step, jnp.float32) - hold_steps) / max(ramp_steps, 1.0)
    return lam * jnp.clip(t + (1.0 if ramp_steps <= 0 else 0.0), 0.0, 1.0)

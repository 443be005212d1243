"""The paper's losses: classification (Eq. 2) and the combined objective (Eq. 11)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def classification_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Eq. 2 as intended: the standard binary cross-entropy (the printed form has a typo)."""
    return optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32))


def combined_loss(bce: jax.Array, spatial: jax.Array, lam: float, mode: str) -> jax.Array:
    """Eq. 11: BCE + lambda * spatial loss; the ablation without a regulator keeps the BCE only."""
    return bce if mode == "none" else bce + lam * spatial

"""The order of an epoch's batches: which record each row of each global batch holds.

Pure numpy (no grain, no TFDS), shared by the host pipeline (``pipeline.batches``) and the
device-resident one (``jaxcerv.training.resident``), so that both feed the same batches.
"""

from __future__ import annotations

import numpy as np


def batch_plan(
    n: int,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool,
    drop_remainder: bool,
    shard_index: int = 0,
    shard_count: int = 1,
    balance: np.ndarray | None = None,
) -> np.ndarray:
    """(num_batches, batch_size // shard_count) plan entries (see `pipeline._LoadRow`), -1 for
    padding.

    The global batch order depends only on (seed, epoch); process p of P takes columns
    [p*b/P, (p+1)*b/P) of each global batch, so the global batch is the same for any P.
    ``balance``: the n labels; the epoch is then n draws, half from each class (`balanced_order`).
    """
    if batch_size < 1 or batch_size % shard_count:
        raise ValueError(f"batch_size {batch_size} must be a positive multiple of {shard_count}")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    if balance is not None:
        order = balanced_order(np.asarray(balance), np.random.default_rng([seed, epoch, 3]))
    elif shuffle:
        order = np.random.default_rng([seed, epoch, 1]).permutation(n)
    else:
        order = np.arange(n)
    if drop_remainder:
        order = order[: n - n % batch_size]
    else:
        order = np.concatenate([order, np.full(-n % batch_size, -1, order.dtype)])
    per = batch_size // shard_count
    return order.reshape(-1, batch_size)[:, shard_index * per : (shard_index + 1) * per]


def balanced_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A shuffled epoch of len(labels) plan entries, half of each class (the odd one drawn).

    Each class is repeated in fresh permutations until its half is filled, so a rare image
    comes back as often as its class needs and every image of a class is used equally often
    (within one). Repeats are encoded as position + n * repeat, so each gets its own
    augmentation.
    """
    n = len(labels)
    classes = np.unique(labels)
    share = rng.multinomial(n, np.full(len(classes), 1 / len(classes)))
    picks = []
    for c, k in zip(classes, share, strict=True):
        members = np.flatnonzero(labels == c)
        rounds = -(-k // len(members))
        drawn = np.concatenate([rng.permutation(members) + n * r for r in range(rounds)])
        picks.append(drawn[:k])
    return rng.permutation(np.concatenate(picks))

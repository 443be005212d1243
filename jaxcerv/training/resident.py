"""The training split kept on the devices (``config.data.resident``).

On a GPU the host pipeline cannot feed the train step at paper scale (an H200 consumed 949 img/s
while grain on its 16-core host delivered 139): with the images uploaded once, each step sends
only its batch's indices and gathers the images on the device. The batches are those of
``pipeline.batches`` without augmentation (same plan, same order, same labels and indices), so a
run trains to the same result either way. Augmentation runs on the host and is refused here
(``configcheck``); the pool is replicated on every device of one process (the paper's 978 images
are 4 GB as uint8).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcerv.data import plan
from jaxcerv.runtime import parallel


class ResidentImages:
    """``source[indices]`` as one uint8 array on the devices; labels and grades on the host."""

    def __init__(self, source: Sequence[dict], indices: np.ndarray, mesh: Any) -> None:
        if jax.process_count() > 1:
            raise ValueError(
                "config.data.resident=True keeps the training images on this process's devices "
                "and does not work across several processes: set config.data.resident=False"
            )
        rows = [source[int(i)] for i in indices]
        self.n = len(rows)
        self.labels = np.array([r["label"] for r in rows], np.int32)
        self.grades = np.array([r["grade"] for r in rows], np.int32)
        images = np.stack([np.asarray(r["image"], np.uint8) for r in rows])
        self.pool = jax.device_put(images, parallel.replicated(mesh))
        self.nbytes = images.nbytes
        self._gather = jax.jit(lambda pool, idx: pool[idx],
                               out_shardings=parallel.batch_sharding(mesh))
        self._sharding = parallel.batch_sharding(mesh)

    def batches(self, *, batch_size: int, seed: int, epoch: int,
                balance: np.ndarray | None = None) -> Iterator[dict[str, jax.Array]]:
        """One training epoch of global batches, as ``pipeline.batches`` (shuffled, last partial
        batch dropped, class-balanced by the labels ``balance``) would give them without
        augmentation."""
        order = plan.batch_plan(
            self.n, batch_size=batch_size, seed=seed, epoch=epoch, shuffle=True,
            drop_remainder=True, balance=balance,
        )
        for entries in order:
            position = (entries % self.n).astype(np.int32)  # a balanced repeat is the same image
            host = {
                "label": self.labels[position],
                "grade": self.grades[position],
                "index": position,
                "mask": np.ones(len(position), bool),
            }
            batch = jax.device_put(host, self._sharding)
            batch["image"] = self._gather(self.pool, jnp.asarray(position))
            yield batch

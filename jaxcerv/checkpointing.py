"""Orbax checkpoints of the whole train state (regulators included) plus loop bookkeeping.

Two managers under ``workdir/checkpoints``: ``latest`` (resume after a kill) and ``best`` (lowest
validation loss, the model that is tested and served). Steps are epoch numbers.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    """Save/restore ``(state, meta)`` where meta is a JSON dict (epoch, early stopping)."""

    def __init__(self, workdir: str) -> None:
        root = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
        self.latest = ocp.CheckpointManager(os.path.join(root, "latest"), options=options)
        self.best = ocp.CheckpointManager(os.path.join(root, "best"), options=options)

    @staticmethod
    def _save(manager: ocp.CheckpointManager, epoch: int, state: Any, meta: dict) -> None:
        manager.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )

    def save(self, epoch: int, state: Any, meta: dict, is_best: bool) -> None:
        self._save(self.latest, epoch, state, meta)
        if is_best:
            self._save(self.best, epoch, state, meta)

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    @staticmethod
    def _restore(manager: ocp.CheckpointManager, like: Any) -> tuple[Any, dict] | None:
        step = manager.latest_step()
        if step is None:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        out = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        return out.state, dict(out.meta)

    def restore_latest(self, like: Any) -> tuple[Any, dict] | None:
        """The state to resume from, shaped and sharded like ``like``, or None on a fresh run."""
        return self._restore(self.latest, like)

    def restore_best(self, like: Any) -> tuple[Any, dict] | None:
        return self._restore(self.best, like)

    def close(self) -> None:
        self.wait()
        self.latest.close()
        self.best.close()

"""Orbax checkpoints of the whole train state (regulators included) plus loop bookkeeping.

Two managers under ``W/checkpoints``: ``latest`` (resume after a kill) and ``best`` (the model
that model selection picked: the one that is tested and served). Steps are epoch numbers.

Integrity: every checkpoint's JSON ``meta`` carries the sha256 of its parameters (``digest``),
checked on every restore, so flipped bytes never restore silently. Both managers keep two steps:
an unreadable or mismatching ``latest`` falls back to the step before it. Saves are synchronous,
so a failed save (disk full) stops the run before it trains on. The two managers use their own
barrier names: with shared names, two processes saving ``latest`` and ``best`` at the same time
waited on each other's barrier until the 300 s timeout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging as std_logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from jaxcerv.runtime import parallel
from jaxcerv.runtime.rundir import RunDir, RunError

KINDS = ("latest", "best")


class CheckpointError(RunError):
    """A checkpoint cannot be written or no usable one can be read (one line: what to do)."""


def params_digest(params: Any) -> str:
    return parallel.replica_digest(params)


# The meta entry that holds each parameter field's digest (``ema_params``: train.ema_epochs).
DIGESTS = {"params": "digest", "ema_params": "ema_digest"}


def _digests(state: Any) -> dict[str, str]:
    """The digest of each parameter field the state has (an absent average has none)."""
    return {name: params_digest(getattr(state, field)) for field, name in DIGESTS.items()
            if getattr(state, field, None) is not None}


def _manager(root: str, kind: str) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=2,
        create=True,
        enable_async_checkpointing=False,
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            barrier_sync_key_prefix=f"jaxcerv_{kind}"
        ),
    )
    return ocp.CheckpointManager(os.path.join(root, kind), options=options)


def _abstract(like: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, like)


def _on_disk(state: Any) -> Any:
    """What is written for a train state: without ``ema_params`` when there is no parameter
    average (``None``), a dict of the other fields, the layout every checkpoint had before the
    field existed, so those still restore."""
    if getattr(state, "ema_params", True) is not None:  # pretraining's state has no such field
        return state
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
            if f.name != "ema_params"}


def _from_disk(restored: Any, like: Any) -> Any:
    """The train state ``_on_disk`` wrote, back in ``like``'s type."""
    return restored if isinstance(restored, type(like)) else like.replace(**restored)


class Checkpoints:
    """Save/restore ``(state, meta)`` where meta is a JSON dict (epoch, model selection, digest)."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        root = os.path.abspath(run.checkpoints)
        self.managers = {kind: _manager(root, kind) for kind in KINDS}

    def save(self, kind: str, epoch: int, state: Any, meta: dict) -> None:
        """Commit ``state`` as step ``epoch`` of ``kind``; any failure is a CheckpointError."""
        meta = {**meta, **_digests(state)}
        try:
            self.managers[kind].save(
                epoch,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(_on_disk(state)), meta=ocp.args.JsonSave(meta)
                ),
                force=True,
            )
            self.managers[kind].wait_until_finished()
        except Exception as e:  # orbax wraps OSError (ENOSPC, EIO) in several exception types
            raise CheckpointError(
                f"saving {self.run.checkpoint_dir(kind, epoch)} failed ({_one_line(e)}); free "
                "disk space or fix the folder, then rerun the same command to resume from the "
                "last saved epoch"
            ) from e

    def steps(self, kind: str) -> list[int]:
        self.managers[kind].reload()
        return sorted(self.managers[kind].all_steps())

    def restore(self, kind: str, step: int, like: Any) -> tuple[Any, dict]:
        """Step ``step`` of ``kind``, shaped and sharded like ``like``; its parameters must match
        the digest saved with them. Raises CheckpointError when unreadable or mismatching."""
        where = self.run.checkpoint_dir(kind, step)
        _drop_closed_loop_reports()
        try:
            with _quiet_orbax():
                out = self.managers[kind].restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(_abstract(_on_disk(like))),
                        meta=ocp.args.JsonRestore(),
                    ),
                )
        except Exception as e:
            raise CheckpointError(f"{where} is unreadable ({_one_line(e)})") from e
        state, meta = _from_disk(out.state, like), dict(out.meta)
        if any(meta.get(name) != digest for name, digest in _digests(state).items()):
            raise CheckpointError(f"{where}: parameters do not match the digest saved with them")
        return state, meta

    def restore_newest(
        self, kind: str, like: Any, accept: Callable[[int], bool] = lambda step: True
    ) -> tuple[Any, dict] | None:
        """The newest usable step of ``kind`` that ``accept`` allows, falling back to older
        retained steps with a warning; None when there is no step at all. Raises
        CheckpointError when steps exist but none is usable."""
        steps = [s for s in self.steps(kind) if accept(s)]
        errors = []
        for step in reversed(steps):
            try:
                restored = self.restore(kind, step, like)
            except CheckpointError as e:
                errors.append(str(e))
                print(f"warning: {e}; trying an older checkpoint", file=sys.stderr, flush=True)
                continue
            return restored
        if errors:
            raise CheckpointError(
                f"no usable checkpoint in {os.path.join(self.run.checkpoints, kind)}: "
                + "; ".join(errors)
                + ". Delete that folder to start again from scratch"
            )
        return None

    def close(self) -> None:
        for m in self.managers.values():
            m.close()


def restore_params(step_dir: str, like: Any, key: str = "params") -> Any:
    """Only the model parameters of a saved train state (no optimizer state or regulators),
    checked against the digest saved with them: what ``predict`` and ``export`` serve. ``key``:
    the state's field, ``params`` or ``ema_params`` (their average, ``train.ema_epochs``).

    A partial orbax restore: it needs neither the number of training images nor the optimizer.
    """
    state_dir = os.path.abspath(os.path.join(step_dir, "state"))
    meta_path = os.path.join(step_dir, "meta", "metadata")
    if not os.path.isdir(state_dir):
        raise CheckpointError(f"{step_dir}: not an orbax step directory of a train state (no "
                              "state/)")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    _drop_closed_loop_reports()
    target = {
        key: jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), like
        )
    }
    try:
        with _quiet_orbax(), ocp.PyTreeCheckpointer() as ckptr:
            params = ckptr.restore(
                state_dir,
                args=ocp.args.PyTreeRestore(
                    item=target,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True,
                ),
            )[key]
        with open(meta_path) as f:
            digest = json.load(f).get(DIGESTS[key])
    except Exception as e:
        raise CheckpointError(f"{step_dir} is unreadable ({_one_line(e)})") from e
    if digest is not None and digest != params_digest(params):
        raise CheckpointError(f"{step_dir}: parameters do not match the digest saved with them; "
                              "the checkpoint is corrupt")
    return params


# orbax's coroutines that read one array of a checkpoint (orbax-checkpoint 0.12.8, pinned).
_ORBAX_READS = ("_read_array_index_and_device_put",)
# Python's warning for those read coroutines when a failed restore left them never started.
_UNAWAITED_READS = rf"coroutine '([\w.<>]+\.)?({'|'.join(_ORBAX_READS)})' was never awaited"


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
    """orbax logs each unreadable file it meets (at ERROR, with the file's content, once per
    thread that reads it) before it raises; the CheckpointError says it in one line."""
    logger = logging.get_absl_logger()  # orbax logs through absl
    level = logger.level
    logger.setLevel(std_logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


# What a read of a failed restore fails with: the TensorStore error the CheckpointError names, or
# the closed loop that the remaining reads complete into.
_FAILED_READ = ("Encountered error while reading array index", "Event loop is closed")


# asyncio's report of a future whose exception nobody read: a task, or the future that
# asyncio.gather returns (orbax gathers the reads of a restore).
_LOST = ("Task exception was never retrieved", "_GatheringFuture exception was never retrieved")


class _DropFailedRestoreTasks(std_logging.Filter):
    """asyncio's "Task exception was never retrieved" for orbax's read tasks of a failed restore,
    and the same for the gathering future of those reads, logged (at ERROR, from garbage
    collection, some time after the restore raised) for each that failed with a read error: the
    CheckpointError has said it in one line."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        text = record.getMessage()
        if not text.startswith(_LOST):
            return True
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]}"
        return not (any(name in text for name in _ORBAX_READS)
                    or any(error in text for error in _FAILED_READ))


def _drop_closed_loop_reports() -> None:
    """Installed before every restore. After a failed one, tensorstore completes the other
    pending reads into the asyncio loop orbax has already closed, and each is reported
    (sys.unraisablehook) as a ``RuntimeError('Event loop is closed')`` traceback, some time
    later, from another thread.
    Likewise orbax's per-array read coroutines of that restore, garbage-collected with their
    read error still set ("Exception ignored in: <coroutine _read_array_index_and_device_put>"),
    and their tasks, which asyncio logs instead ("Task exception was never retrieved"), and
    those never started, which Python warns of ("RuntimeWarning: coroutine ... was never
    awaited", two lines on stderr).
    They say nothing beyond the CheckpointError already raised: drop exactly those reports."""
    if not any(f[1] is not None and f[1].pattern == _UNAWAITED_READS for f in warnings.filters):
        warnings.filterwarnings("ignore", message=_UNAWAITED_READS, category=RuntimeWarning)
    asyncio_log = std_logging.getLogger("asyncio")
    if not any(isinstance(f, _DropFailedRestoreTasks) for f in asyncio_log.filters):
        asyncio_log.addFilter(_DropFailedRestoreTasks())
    previous = sys.unraisablehook
    if getattr(previous, "_jaxcerv_filter", False):
        return

    def hook(unraisable: Any) -> None:
        e = unraisable.exc_value
        closed_loop = isinstance(e, RuntimeError) and str(e) == "Event loop is closed"
        orbax_read = getattr(unraisable.object, "__name__", "") in _ORBAX_READS
        if not (closed_loop or orbax_read):
            previous(unraisable)

    hook._jaxcerv_filter = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _one_line(e: BaseException, limit: int = 200) -> str:
    # TensorStore appends "See full TensorStore details: <bound method pybind11...>": no detail.
    text = " ".join(f"{type(e).__name__}: {e}".split()).split(" See full TensorStore")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."

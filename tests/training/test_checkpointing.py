"""Checkpoint integrity: the parameter digest saved with each step is checked on every restore,
and an unusable newest step falls back to the one before."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcerv.runtime.rundir import RunDir
from jaxcerv.training import checkpointing
from jaxcerv.training.steps import TrainState


def _state(value: float) -> TrainState:
    return TrainState(
        step=jnp.asarray(3, jnp.int32),
        params={"w": jnp.full((4, 3), value, jnp.float32), "b": jnp.arange(3.0)},
        opt_state={"m": jnp.zeros((4, 3))},
        rng=jnp.zeros((2,), jnp.uint32),
        regulators=jnp.ones((5, 5)),
        regulator_agree=jnp.zeros((5,), jnp.int32),
    )


def _meta_file(run: RunDir, kind: str, step: int):
    return f"{run.checkpoint_dir(kind, step)}/meta/metadata"


def test_digest_is_the_sha256_of_the_params_and_is_checked_on_restore(tmp_path):
    import hashlib

    run = RunDir(str(tmp_path))
    ckpt = checkpointing.Checkpoints(run)
    state = _state(1.5)
    ckpt.save("latest", 1, state, {"epoch": 1})
    meta = json.load(open(_meta_file(run, "latest", 1)))
    # Oracle: sha256 over the leaves in tree order (dtype, shape, bytes), written out here.
    h = hashlib.sha256()
    for leaf in (np.arange(3.0, dtype=np.float32), np.full((4, 3), 1.5, np.float32)):  # b, w
        h.update(f"{leaf.dtype.str}{leaf.shape}".encode())
        h.update(leaf.tobytes())
    assert meta["digest"] == h.hexdigest()
    restored, got = ckpt.restore("latest", 1, state)
    np.testing.assert_array_equal(restored.params["w"], state.params["w"])
    assert got["epoch"] == 1

    # A digest that does not match what is stored: refused, never restored silently.
    meta["digest"] = "0" * 64
    json.dump(meta, open(_meta_file(run, "latest", 1), "w"))
    with pytest.raises(checkpointing.CheckpointError, match="do not match the digest"):
        ckpt.restore("latest", 1, state)
    with pytest.raises(checkpointing.CheckpointError, match="no usable checkpoint"):
        ckpt.restore_newest("latest", state)
    ckpt.close()


def test_the_parameter_average_has_its_own_digest_checked_on_restore(tmp_path):
    """With ema_params (train.ema_epochs > 0) the meta also carries their digest, the same
    sha256 as a state whose params held those values; a full restore and predict's partial
    one both check it."""
    run = RunDir(str(tmp_path))
    ckpt = checkpointing.Checkpoints(run)
    average = {"w": jnp.full((4, 3), 0.25, jnp.float32), "b": jnp.arange(3.0) / 2}
    ckpt.save("best", 1, _state(1.5).replace(ema_params=average), {"epoch": 1})
    ckpt.save("latest", 1, _state(1.5).replace(params=average), {"epoch": 1})
    meta = json.load(open(_meta_file(run, "best", 1)))
    assert meta["ema_digest"] == json.load(open(_meta_file(run, "latest", 1)))["digest"]
    restored, _ = ckpt.restore("best", 1, _state(0.0).replace(ema_params=average))
    np.testing.assert_array_equal(restored.ema_params["w"], average["w"])
    step_dir = run.checkpoint_dir("best", 1)
    served = checkpointing.restore_params(step_dir, average, "ema_params")
    np.testing.assert_array_equal(served["b"], average["b"])

    meta["ema_digest"] = "0" * 64
    json.dump(meta, open(_meta_file(run, "best", 1), "w"))
    with pytest.raises(checkpointing.CheckpointError, match="do not match the digest"):
        ckpt.restore("best", 1, _state(0.0).replace(ema_params=average))
    with pytest.raises(checkpointing.CheckpointError, match="do not match the digest"):
        checkpointing.restore_params(step_dir, average, "ema_params")
    checkpointing.restore_params(step_dir, average, "params")  # the raw digest still holds
    ckpt.close()


def test_a_checkpoint_written_before_the_average_existed_still_restores(tmp_path):
    """A train state saved (by orbax itself) as the six-field dataclass of before ema_params
    restores into today's state with no average, and resaving keeps that layout."""
    import flax
    import orbax.checkpoint as ocp

    @flax.struct.dataclass
    class Before:
        step: jnp.ndarray
        params: dict
        opt_state: dict
        rng: jnp.ndarray
        regulators: jnp.ndarray
        regulator_agree: jnp.ndarray

    today = _state(1.5)
    before = Before(**{k: getattr(today, k) for k in Before.__dataclass_fields__})
    run = RunDir(str(tmp_path))
    with ocp.CheckpointManager(str(tmp_path / "checkpoints" / "latest")) as manager:
        manager.save(4, args=ocp.args.Composite(
            state=ocp.args.StandardSave(before),
            meta=ocp.args.JsonSave({"epoch": 4,
                                    "digest": checkpointing.params_digest(before.params)})))
    ckpt = checkpointing.Checkpoints(run)
    restored, meta = ckpt.restore("latest", 4, _state(0.0))
    assert meta["epoch"] == 4 and restored.ema_params is None
    np.testing.assert_array_equal(restored.params["w"], before.params["w"])
    np.testing.assert_array_equal(restored.regulators, before.regulators)
    ckpt.save("latest", 5, restored, {"epoch": 5})
    ckpt.close()
    with ocp.CheckpointManager(str(tmp_path / "checkpoints" / "latest")) as manager:
        again = manager.restore(5, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(before), meta=ocp.args.JsonRestore()))
    np.testing.assert_array_equal(again.state.params["b"], before.params["b"])


def test_newest_unusable_step_falls_back_to_the_one_before(tmp_path, capsys):
    run = RunDir(str(tmp_path))
    ckpt = checkpointing.Checkpoints(run)
    ckpt.save("latest", 1, _state(1.0), {"epoch": 1})
    ckpt.save("latest", 2, _state(2.0), {"epoch": 2})
    meta = json.load(open(_meta_file(run, "latest", 2)))
    meta["digest"] = "f" * 64
    json.dump(meta, open(_meta_file(run, "latest", 2), "w"))
    state, got = ckpt.restore_newest("latest", _state(0.0))
    assert got["epoch"] == 1
    np.testing.assert_array_equal(state.params["w"], np.full((4, 3), 1.0))
    assert "latest/2: parameters do not match" in capsys.readouterr().err
    assert ckpt.restore_newest("best", _state(0.0)) is None  # nothing saved there
    ckpt.close()


def test_failed_restore_reads_are_not_logged_but_other_lost_task_errors_are(caplog):
    """A read task of a failed restore, never awaited and garbage-collected with its error set,
    is dropped from asyncio's log; any other task's lost exception is still logged."""
    import asyncio
    import gc

    async def _read_array_index_and_device_put():  # orbax's name for one array read
        raise Exception("Encountered error while reading array index: (slice(0, 3, 1),)")

    async def some_other_task():
        raise ValueError("a bug of our own")

    def lose(coro) -> None:
        loop = asyncio.new_event_loop()
        task = loop.create_task(coro)
        loop.run_until_complete(asyncio.sleep(0))  # the task runs and fails, nobody awaits it
        loop.close()
        del task
        gc.collect()

    def lose_gathered(coro) -> None:
        """asyncio.gather's future of a failed read, never awaited: asyncio logs
        "_GatheringFuture exception was never retrieved" (seen in `make test` after a truncated
        checkpoint, now that a state has more arrays to read)."""
        loop = asyncio.new_event_loop()

        async def gather():
            return asyncio.gather(coro)

        future = loop.run_until_complete(gather())
        loop.run_until_complete(asyncio.sleep(0))  # the read runs and fails into the future
        loop.close()
        del future
        gc.collect()

    checkpointing._drop_closed_loop_reports()
    with caplog.at_level("ERROR", logger="asyncio"):
        lose(_read_array_index_and_device_put())
        lose(some_other_task())
        lose_gathered(_read_array_index_and_device_put())
        lose_gathered(some_other_task())
    lost = [r for r in caplog.records
            if r.getMessage().splitlines()[0].endswith("exception was never retrieved")]
    assert [r.getMessage().split()[0] for r in lost] == ["Task", "_GatheringFuture"], lost
    assert all("a bug of our own" in str(r.exc_info[1]) for r in lost), lost


def test_a_read_coroutine_left_unstarted_by_a_failed_restore_is_not_warned_about():
    """Seen in `make test`: after a truncated checkpoint's failed read, Python warned on stderr
    that one of orbax's read coroutines "was never awaited" (two lines beside the one clear
    warning). Only that coroutine's warning is dropped; another never-awaited coroutine still
    warns."""
    import gc
    import warnings

    async def _read_array_index_and_device_put():  # orbax's name for one array read
        return None

    async def some_other_coroutine():
        return None

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        checkpointing._drop_closed_loop_reports()
        for make in (_read_array_index_and_device_put, some_other_coroutine):
            coro = make()
            del coro
            gc.collect()
    unawaited = [str(w.message) for w in caught if "never awaited" in str(w.message)]
    assert len(unawaited) == 1 and "some_other_coroutine" in unawaited[0], unawaited

"""The run folder: every path a run writes or reads, and the small files in it.

One owner for the layout, so training, evaluation, the report, predict and the experiment runner
agree on where things are. numpy + json only: importing this module loads neither JAX nor orbax.

    W/config.json             the resolved config (a fold's config is its parent's)
    W/splits.json             the session-grouped splits
    W/lock                    who is training in W (host, pid)
    W/metrics.jsonl           one line per epoch (and W/tensorboard/ event files)
    W/checkpoints/{latest,best}/<epoch>
    W/regulators/epoch_NNNN.npy, W/regulators/train_ids.json
    W/eval/{val,test}.npz     per-image predictions of the tested model
    W/heatmaps/*.png, W/report/index.html, W/results.json
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
from typing import Any

import numpy as np


class RunError(RuntimeError):
    """A run folder cannot be used as asked; the message says what is missing and what to do."""


def json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` atomically (a reader never sees half a file, a crash never leaves one)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=json_default)
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


@dataclasses.dataclass(frozen=True)
class RunDir:
    """The paths of one run folder (one fold of a cross-validation is a run folder too)."""

    root: str

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def config(self) -> str:
        return self.path("config.json")

    @property
    def splits(self) -> str:
        return self.path("splits.json")

    @property
    def lock(self) -> str:
        return self.path("lock")

    @property
    def metrics(self) -> str:
        return self.path("metrics.jsonl")

    @property
    def tensorboard(self) -> str:
        return self.path("tensorboard")

    @property
    def results(self) -> str:
        return self.path("results.json")

    @property
    def checkpoints(self) -> str:
        return self.path("checkpoints")

    @property
    def regulators(self) -> str:
        return self.path("regulators")

    def regulators_at(self, epoch: int) -> str:
        return self.path("regulators", f"epoch_{epoch:04d}.npy")

    @property
    def train_ids(self) -> str:
        return self.path("regulators", "train_ids.json")

    def eval_npz(self, split: str) -> str:
        return self.path("eval", f"{split}.npz")

    @property
    def heatmaps(self) -> str:
        return self.path("heatmaps")

    @property
    def report(self) -> str:
        return self.path("report")

    @property
    def predictions(self) -> str:
        return self.path("predictions")

    @property
    def tfds(self) -> str:
        return self.path("tfds")

    def fold(self, k: int) -> RunDir:
        return RunDir(self.path(f"fold_{k}"))

    def folds(self) -> list[RunDir]:
        """The fold folders of a cross-validation run, in fold order (empty for one split)."""
        if not os.path.isdir(self.root):
            return []
        ks = sorted(int(d[5:]) for d in os.listdir(self.root) if d.startswith("fold_") and
                    d[5:].isdigit())
        return [self.fold(k) for k in ks]

    def makedirs(self) -> None:
        for d in (self.root, self.regulators, self.path("eval"), self.heatmaps):
            os.makedirs(d, exist_ok=True)

    # -- the small files -------------------------------------------------------------------

    def config_file(self) -> str:
        """``config.json`` here, or the parent's for a cross-validation fold ``W/fold_K``."""
        for folder in (self.root, os.path.dirname(os.path.abspath(self.root))):
            path = os.path.join(folder, "config.json")
            if os.path.isfile(path):
                return path
        raise RunError(f"{self.root}: no config.json here or in the parent folder; is it a run "
                       "folder?")

    def read_config(self) -> Any:
        """The resolved config the run saved (JSON lists stand in for tuples)."""
        import ml_collections

        return ml_collections.ConfigDict(read_json(self.config_file()))

    def read_results(self) -> dict[str, Any]:
        if not os.path.isfile(self.results):
            raise RunError(f"{self.results} is missing: the run has not finished evaluating "
                           "(rerun the training command to finish it)")
        return read_json(self.results)

    def read_threshold(self) -> float:
        results = self.read_results()
        if "threshold" not in results:
            hint = " (cross-validation: pass --workdir W/fold_K)" if "folds" in results else ""
            raise RunError(f"{self.results} has no decision threshold{hint}")
        return float(results["threshold"])

    def read_metrics(self) -> list[dict[str, Any]]:
        if not os.path.isfile(self.metrics):
            return []
        with open(self.metrics) as f:
            return [json.loads(ln) for ln in f if ln.strip()]

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(row, default=json_default) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate_metrics(self, last_epoch: int) -> None:
        """On resume, forget epochs logged after the checkpoint we resume from."""
        rows = [r for r in self.read_metrics() if r["epoch"] <= last_epoch]
        tmp = f"{self.metrics}.tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        os.replace(tmp, self.metrics)

    def checkpoint_steps(self, kind: str) -> list[int]:
        """Committed steps of ``checkpoints/<kind>`` (not orbax's unfinished ``*.tmp`` ones)."""
        root = self.path("checkpoints", kind)
        if not os.path.isdir(root):
            return []
        return sorted(int(d) for d in os.listdir(root) if d.isdigit())

    def checkpoint_dir(self, kind: str, step: int) -> str:
        return self.path("checkpoints", kind, str(step))

    def holds_a_run(self) -> bool:
        """True once a run has left a checkpoint or results here (or in a fold folder): then
        its config is the folder's. A folder with only a config (a run that failed before its
        first epoch) holds nothing to mix."""
        return any(os.path.exists(r.results) or r.checkpoint_steps("latest") or
                   r.checkpoint_steps("best") for r in (self, *self.folds()))

    def outputs(self) -> list[str]:
        """Everything a training run writes here except the lock, the config and the data set
        cache (``tfds``): what a restart deletes."""
        fixed = [self.checkpoints, self.metrics, self.tensorboard, self.regulators,
                 self.path("eval"), self.heatmaps, self.report, self.results, self.splits,
                 self.predictions]
        return [p for p in fixed + [f.root for f in self.folds()] if os.path.lexists(p)]


# -- one config per run folder ---------------------------------------------------------------

# What a rerun may change in a folder that already holds a run: settings that extend the run
# (more epochs, more patience), change only its logging, report, speed or the data set's cache
# folder, or are read by another command. Anything else (grid, learning rate, data, model...)
# would resume one config's checkpoints under another and mix the two in one folder.
RERUN_MAY_CHANGE = (
    "train.epochs", "train.patience",  # extend (or shorten) the run
    "train.max_bce",  # the divergence guard: it stops a run, it never changes a step
    "train.log_every_steps", "eval.num_heatmaps", "eval.bootstrap",  # logging and report only
    "eval.batch_size", "data.num_workers", "data.prefetch",  # speed only, same numbers
    "data.data_dir",  # where the prepared data set is cached
    "train.restart",  # what this command does, not what the run is
    "pretrain.", "handcrafted.",  # read by `jaxcerv pretrain` and the hand-crafted baseline only
)


def flatten_config(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {"section.key": value}."""
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(flatten_config(v, f"{prefix}{k}."))
    return out


def config_changes(recorded: dict, new: dict) -> tuple[list[str], list[str]]:
    """(allowed, refused): the dotted keys whose value differs between the config a run folder
    recorded and a rerun's, split by ``RERUN_MAY_CHANGE``; each item reads ``key: old -> new``.
    Both are compared as JSON (tuples are lists there); a key on one side only differs."""
    old, now = flatten_config(json.loads(json.dumps(recorded, default=json_default))), \
        flatten_config(json.loads(json.dumps(new, default=json_default)))
    allowed, refused = [], []
    for key in sorted(old.keys() | now.keys()):
        a, b = old.get(key, "(absent)"), now.get(key, "(absent)")
        if a == b:
            continue
        may = any(key == k or (k.endswith(".") and key.startswith(k)) for k in RERUN_MAY_CHANGE)
        (allowed if may else refused).append(f"{key}: {a!r} -> {b!r}")
    return allowed, refused


def json_number(x: float) -> float | None:
    """A float for JSON, None for NaN and infinities (which JSON cannot carry)."""
    return float(x) if math.isfinite(x) else None


# -- the workdir lock ------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(run: RunDir) -> None:
    """Hold ``W/lock`` for this process, or raise RunError naming the live holder.

    The lock file is created with O_EXCL, so two runs cannot both take it. A lock whose holder
    is gone (same host, dead pid: a killed run) is taken over. A lock held from another host
    cannot be checked from here: the message names it and says how to clear it.
    """
    os.makedirs(run.root, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(2):
        try:
            fd = os.open(run.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = read_json(run.lock)
            except (OSError, ValueError):
                holder = {}  # half-written by a process killed while taking it
            host, pid = holder.get("host"), holder.get("pid")
            if holder and host == me["host"] and pid == me["pid"]:
                return
            if holder and host != me["host"]:
                raise RunError(
                    f"{run.root} is in use by pid {pid} on host {host} ({run.lock}); wait for it, "
                    "or delete that file if that run is gone"
                ) from None
            if holder and isinstance(pid, int) and _alive(pid):
                raise RunError(
                    f"{run.root} is in use by pid {pid} on this host ({host}); wait for it to "
                    "finish or stop it, or use another --workdir"
                ) from None
            os.remove(run.lock)  # stale: its holder was killed
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return
    raise RunError(f"{run.lock}: could not take the lock; another run is starting in this folder")


def release_lock(run: RunDir) -> None:
    try:
        holder = read_json(run.lock)
    except (OSError, ValueError):
        return
    if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        os.remove(run.lock)

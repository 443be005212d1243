"""Self-supervised pretraining of the patch encoder on unlabelled photographs (SimCLR-style
contrastive learning on patches), and the pieces that start a classifier from it.

`jaxcerv pretrain --config=configs/iarc_atlas.py --workdir=W` reads every JPEG/PNG under
`config.pretrain.images_dir` (default: `config.data.manual_dir`; any folder works, including the
atlas's Lugol's iodine, saline and green-filter views that the classifier never uses) and under
each folder of `config.pretrain.extra_dirs` (another set's photographs: more to learn from), resized
as the classifier's images are, and trains `model.PatchEncoder` plus a projection head. Same
lifecycle as training: `W/lock`, `W/config.json`, `checkpoints/latest` every epoch (rerun to
resume; a finished run only rewrites the encoder), `metrics.jsonl` + TensorBoard, a progress
line. The result is `W/encoder.npz`: the encoder's parameters under flat names
`encoder/Conv_<i>/{kernel,bias}`, the `model.init_from` format: train from it with
`--config.model.init_from=W/encoder.npz` (`--config.train.freeze_encoder_steps=N` holds it still
for the first N steps, `steps.freeze_encoder`).

With `config.pretrain.per_fold=True` the photographs of each fold's test sessions are held out
(`held_out_folds`; a photograph's session is its folder's name, `session_of`): one encoder per fold
of the classifier's own splits in `W/fold_<k>/encoder.npz`, the splits in `W/splits.json`, and
`--config.model.init_from=W/fold_{fold}/encoder.npz --config.data.splits_file=W/splits.json`
trains each fold from the encoder that never saw its test images.

Why contrastive rather than masked reconstruction: the classifier uses the encoder's pooled
3x3x48 feature as the description of a patch, and a contrastive loss trains exactly that output
to tell patches apart while ignoring what does not matter (a few pixels of shift, mirror,
exposure, focus); reconstruction would need a decoder and spends its capacity on restoring
pixel colour and position, which the max-pools throw away. The colour jitter stays mild
(exposure and contrast within 15%, no hue change) because acetowhitening, the VIA cue, is a
colour change: strong colour augmentation would teach the encoder to ignore it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxcerv.data import images
from jaxcerv.model import networks as model_lib
from jaxcerv.runtime import progress as reporting
from jaxcerv.runtime.rundir import RunDir, RunError, acquire_lock, release_lock, write_json
from jaxcerv.training.checkpointing import Checkpoints
from jaxcerv.training.metric_log import MetricWriter

PREFIX = "encoder"  # the parameter path: encoder.npz is a model.init_from file
ENCODER_FILE = "encoder.npz"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_MIN_TISSUE = 40  # a patch whose brightest channel averages below this is letterbox or shadow


# --------------------------------------------------------------------------- objective


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array]:
    """SimCLR's NT-Xent loss of two views (B, D) and the fraction of anchors whose nearest
    other embedding is their own positive (retrieval accuracy).

    Embeddings are L2-normalised; each of the 2B anchors has one positive (the other view of
    its patch) and 2B-2 negatives; the loss is the mean cross-entropy of picking the positive.
    """
    z = jnp.concatenate([z1, z2]).astype(jnp.float32)
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    n = z1.shape[0]
    sim = z @ z.T / temperature
    sim = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, sim)
    positive = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
    loss = -jnp.mean(jax.nn.log_softmax(sim)[jnp.arange(2 * n), positive])
    accuracy = jnp.mean(jnp.argmax(sim, axis=1) == positive)
    return loss, accuracy


class ContrastiveEncoder(nn.Module):
    """The classifier's `PatchEncoder` (named "encoder", as in `PatchWiseModel`) plus a
    projection head that only pretraining uses (SimCLR: the loss is taken after the head)."""

    conv_features: tuple[int, ...]
    conv_impl: str
    projection: tuple[int, ...]

    @nn.compact
    def __call__(self, patches: jax.Array) -> jax.Array:
        x = model_lib.normalise_pixels(patches, jnp.float32)
        g = model_lib.PatchEncoder(self.conv_features, jnp.float32, self.conv_impl,
                                   name="encoder")(x)
        for width in self.projection[:-1]:
            g = nn.relu(nn.Dense(width)(g))
        return nn.Dense(self.projection[-1])(g)


@flax.struct.dataclass
class PretrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def make_step(net: ContrastiveEncoder, tx: optax.GradientTransformation, temperature: float):
    def step(state: PretrainState, v1: jax.Array, v2: jax.Array):
        def loss_fn(params):
            return nt_xent(net.apply({"params": params}, v1), net.apply({"params": params}, v2),
                           temperature)

        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), {
            "loss": loss, "accuracy": acc, "finite": finite}

    return jax.jit(step, donate_argnums=0)


# ------------------------------------------------------------------------------- data


def find_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Every JPEG/PNG under ``folder`` (recursive, sorted: the order is part of the run)."""
    root = Path(folder)
    if not root.is_dir():
        raise RunError(f"config.pretrain.images_dir={os.fspath(folder)!r} is not a folder: point "
                       "it at a folder of photographs")
    found = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise RunError(f"no .jpg/.jpeg/.png files under {root}: point config.pretrain.images_dir "
                       "at a folder of photographs")
    return found


def load_images(
    paths: list[Path], config: ml_collections.ConfigDict
) -> tuple[np.ndarray, list[Path]]:
    """(N, S, S, 3) uint8, resized as the classifier's data (grid x patch px, its policy), and
    the N paths read. Unreadable files are skipped with one line each."""
    side = config.grid_size * config.patch_size
    out, read = [], []
    for path in paths:
        try:
            out.append(images.load_image(path, image_size=side, patch_size=config.patch_size,
                                         resize=config.data.resize))
            read.append(path)
        except images.ImageError as e:
            print(f"skipped {e}", flush=True)
    if not out:
        raise RunError("none of the photographs could be read")
    return np.stack(out), read


def session_of(path: Path) -> str:
    """The session a photograph belongs to: the name of its folder, less a ``case_`` prefix (the
    atlas's ``images_*/case_<ID>/`` layout; any folder of one folder per session works)."""
    return path.parent.name.removeprefix("case_")


def held_out_folds(paths: list[Path], sessions: np.ndarray,
                   folds: list[dict[str, np.ndarray]]) -> list[tuple[np.ndarray, list[str]]]:
    """Per fold, the indices of the photographs it may pretrain on (every one outside the fold's
    test sessions) and those sessions. Refused in one line when a labelled session has no
    folder of photographs: its test images could then leak into pretraining unnoticed."""
    keys = np.array([session_of(p) for p in paths])
    known = set(sessions.astype(str).tolist())
    missing = sorted(known - set(keys.tolist()))
    if missing:
        raise RunError(
            f"config.pretrain.per_fold: {len(missing)} of the dataset's {len(known)} sessions "
            f"(e.g. {missing[0]!r}) have no folder of photographs named after them, so their "
            "photographs cannot be held out: keep each session's photographs in a folder named "
            "<session> or case_<session>, or set config.pretrain.per_fold=False"
        )
    out = []
    for split in folds:
        test = sorted(set(sessions[split["test"]].astype(str).tolist()))
        out.append((np.flatnonzero(~np.isin(keys, test)), test))
    return out


def sample_views(
    photos: np.ndarray, batch: int, patch: int, rng: np.random.Generator, max_shift: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Two views (B, P, P, 3) uint8 of ``batch`` random tissue patches.

    A patch is drawn at a random place of a random photograph (redrawn where it is letterbox or
    shadow); each view is that patch shifted by up to ``max_shift`` px, mirrored at random, with
    its own exposure and contrast within 15% and, half the time, a 3x3 box blur.
    """
    n, side = photos.shape[0], photos.shape[1]
    span = side - patch - 2 * max_shift
    img = rng.integers(0, n, batch)
    y, x = rng.integers(0, span + 1, (2, batch)) + max_shift
    for _ in range(8):  # redraw dark places (letterbox, shadow) a few times
        dark = photos[img, y + patch // 2, x + patch // 2].max(-1) < _MIN_TISSUE
        if not dark.any():
            break
        img[dark] = rng.integers(0, n, dark.sum())
        y[dark], x[dark] = rng.integers(0, span + 1, (2, dark.sum())) + max_shift
    views = []
    grid = np.arange(patch)
    for _ in range(2):
        dy, dx = rng.integers(-max_shift, max_shift + 1, (2, batch))
        rows = (y + dy)[:, None] + grid[None, :]
        cols = (x + dx)[:, None] + grid[None, :]
        v = photos[img[:, None, None], rows[:, :, None], cols[:, None, :]].astype(np.float32)
        mirror = rng.random(batch) < 0.5
        v[mirror] = v[mirror, :, ::-1]
        gain = rng.uniform(0.85, 1.15, (batch, 1, 1, 1))
        contrast = rng.uniform(0.85, 1.15, (batch, 1, 1, 1))
        mean = v.mean(axis=(1, 2, 3), keepdims=True)
        v = (v - mean) * contrast + mean * gain
        blur = rng.random(batch) < 0.5
        if blur.any():
            padded = np.pad(v[blur], ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
            v[blur] = sum(padded[:, i:i + patch, j:j + patch] for i in range(3)
                          for j in range(3)) / 9
        views.append(np.clip(np.rint(v), 0, 255).astype(np.uint8))
    return views[0], views[1]


# ------------------------------------------------------------------ the encoder's file


def _flat_encoder(params: Any) -> dict[str, Any]:
    flat = flax.traverse_util.flatten_dict(params["encoder"], sep="/")
    return {f"{PREFIX}/{k}": v for k, v in flat.items()}


def encoder_arrays(params: Any) -> dict[str, np.ndarray]:
    """Flat ``encoder/<layer>/<name>`` arrays of ``params["encoder"]``."""
    return {k: np.asarray(v) for k, v in _flat_encoder(params).items()}


# ------------------------------------------------------------------------------ loop


@dataclasses.dataclass
class Pretraining:
    net: ContrastiveEncoder
    tx: optax.GradientTransformation
    photos: np.ndarray


def _initial_state(config: ml_collections.ConfigDict, setup: Pretraining) -> PretrainState:
    p = config.patch_size
    params = setup.net.init(jax.random.PRNGKey(config.seed), jnp.zeros((1, p, p, 3), jnp.uint8))
    params = params["params"]
    return PretrainState(jnp.zeros((), jnp.int32), params, setup.tx.init(params))


def pretrain(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train (or resume) and write ``W/encoder.npz`` and ``W/results.json``; with
    ``config.pretrain.per_fold`` one encoder per fold of the classifier's splits, each without
    the photographs of that fold's test sessions, in ``W/fold_<k>/encoder.npz``. A folder
    without photographs is refused before anything is written."""
    folders = [config.pretrain.images_dir or config.data.manual_dir,
               *config.pretrain.get("extra_dirs", ())]
    found = {folder: find_images(folder) for folder in folders}
    paths = [p for ps in found.values() for p in ps]
    run = RunDir(workdir)
    run.makedirs()
    acquire_lock(run)
    try:
        write_json(run.config, config.to_dict())
        where = " + ".join(f"{len(ps)} under {folder}" for folder, ps in found.items())
        with reporting.announce(f"reading {len(paths)} photographs ({where})"):
            photos, paths = load_images(paths, config)
        pool = {"folders": {os.fspath(folder): len(ps) for folder, ps in found.items()}}
        if not config.pretrain.get("per_fold"):
            return _pretrain(config, run, photos, pool)
        return _pretrain_per_fold(config, run, photos, paths, pool)
    finally:
        release_lock(run)


def _pretrain_per_fold(config: ml_collections.ConfigDict, run: RunDir, photos: np.ndarray,
                       paths: list[Path], pool: dict[str, Any]) -> dict[str, Any]:
    """The classifier's own folds (``splits.make_splits`` on the labelled dataset, written to
    ``W/splits.json``: train with ``data.splits_file`` set to it), one encoder each. A single
    split is fold 0."""
    from jaxcerv.data import pipeline, splits

    _, records = pipeline.load(config, run.root)
    folds = splits.make_splits(records, config.data, run.root, seed=config.seed)
    per_fold = []
    for k, (keep, test) in enumerate(held_out_folds(paths, records.sessions, folds)):
        print(f"=== fold {k + 1}/{len(folds)}: {len(keep)} of {len(paths)} photographs, the "
              f"{len(test)} test sessions held out ===", flush=True)
        fold_run = run.fold(k)
        fold_run.makedirs()
        per_fold.append(_pretrain(config, fold_run, photos[keep],
                                  {**pool, "held_out_sessions": test}))
    template = os.path.join(run.root, f"fold_{model_lib.FOLD_FIELD}", ENCODER_FILE)
    results = {**pool, "encoder": template, "splits": run.splits, "folds": per_fold}
    write_json(run.results, results)
    print(f"encoders: {results['encoder']} (model.init_from takes this template as it is)",
          flush=True)
    return results


def _pretrain(config: ml_collections.ConfigDict, run: RunDir, photos: np.ndarray,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    pc = config.pretrain
    t0 = time.perf_counter()
    net = ContrastiveEncoder(tuple(config.model.conv_features), config.model.conv_impl,
                             tuple(pc.projection))
    setup = Pretraining(net, optax.adam(pc.learning_rate), photos)
    step_fn = make_step(net, setup.tx, pc.temperature)
    ckpt = Checkpoints(run)
    writer = MetricWriter(run)
    try:
        restored = ckpt.restore_newest("latest", _initial_state(config, setup))
        if restored is None:
            run.truncate_metrics(0)
            state, epoch = _initial_state(config, setup), 0
        else:
            state, meta = restored
            epoch = int(meta["epoch"])
            print(f"Resuming from epoch {epoch} (checkpoint in {run.checkpoints})", flush=True)
            run.truncate_metrics(epoch)
        while epoch < pc.epochs:
            epoch += 1
            state, row = _epoch(config, setup, step_fn, state, epoch)
            writer.write(row)
            print(f"epoch {epoch}: loss {row['loss']:.4f}, positive-pair retrieval "
                  f"{row['retrieval_accuracy']:.3f} | {row['patches_per_s']:.0f} patches/s",
                  flush=True)
            ckpt.save("latest", epoch, state, {"epoch": epoch})
    finally:
        writer.close()
        ckpt.close()
    arrays = encoder_arrays(state.params)
    np.savez(run.path(ENCODER_FILE), **arrays)
    rows = run.read_metrics()
    results = {
        "encoder": run.path(ENCODER_FILE),
        "names": sorted(arrays),
        "photographs": len(photos),
        "epochs": epoch,
        "final": rows[-1] if rows else None,
        "wall_s_this_call": time.perf_counter() - t0,
        "train_s_total": float(sum(r["epoch_time_s"] for r in rows)),
        **(extra or {}),
    }
    write_json(run.results, results)
    print(f"encoder: {results['encoder']}", flush=True)
    return results


def _epoch(config, setup: Pretraining, step_fn, state: PretrainState, epoch: int):
    pc = config.pretrain
    bar = reporting.Progress(pc.steps_per_epoch, f"epoch {epoch}/{pc.epochs}")
    t0 = time.perf_counter()
    losses, accs = [], []
    for i in range(pc.steps_per_epoch):
        rng = np.random.default_rng([config.seed, epoch, i])  # the batch is a function of both
        v1, v2 = sample_views(setup.photos, pc.batch_patches, config.patch_size, rng)
        state, m = step_fn(state, v1, v2)
        if not bool(m["finite"]):
            raise RunError(f"pretraining diverged at epoch {epoch}, step {i + 1}: lower "
                           "--config.pretrain.learning_rate and rerun to resume")
        losses.append(float(m["loss"]))
        accs.append(float(m["accuracy"]))
        bar.update(postfix=f"loss {losses[-1]:.3f}")
    bar.close()
    seconds = time.perf_counter() - t0
    return state, {
        "epoch": epoch, "step": int(state.step), "loss": float(np.mean(losses)),
        "retrieval_accuracy": float(np.mean(accs)),
        "patches_per_s": 2 * pc.batch_patches * pc.steps_per_epoch / seconds,
        "epoch_time_s": seconds,
    }

"""Predict CIN2+ for image files with a trained run: probability, label, heatmap and regulator.

    jaxcerv predict --workdir=W [--out=DIR] IMAGE...
    jaxcerv predict --checkpoint=W/checkpoints/best/12 IMAGE...

``--workdir`` serves the run's selected checkpoint (``best_epoch`` of results.json: the tested one)
with the decision threshold chosen on validation (``W/results.json``) and the config
(``W/config.json``, or the parent folder's for a cross-validation fold ``W/fold_K``).
``--checkpoint`` serves one orbax step directory instead, ``<run>/checkpoints/{best,latest}/<N>``;
the run folder (config, threshold) is then the directory three levels up unless ``--workdir`` says.

Every file is decoded and resized exactly as the dataset builders do (``data.images.read_image``
with the run's grid, patch size and resize policy), so a JPEG or PNG of any size and aspect works.
Stdout gets one JSON line per input, in input order (``served.predict_images``): ``image``,
``probability``, ``label`` (1 = CIN2+), ``class``, ``threshold``, ``heatmap`` (a PNG in ``--out``,
default ``W/predictions``: the photograph at its own aspect ratio with the patch weights, a colour
bar, probability and threshold), ``model`` (provenance: data set, config digest, checkpoint, test
ROC AUC), ``regulator`` (the Gaussian fitted to this image's patch weights,
``[mu_h, mu_v, s_hh, s_hv, s_vv]`` in patch units, null entries if the map is all zero) and, for a
model trained on synthetic data, ``warning`` (said once on stderr too). ``--save_weights`` also
writes ``<stem>.weights.npy`` (the patch weights the heatmap draws, float32 (rows, cols), row 0 at
the top of the photograph) and adds ``weights_file``, ``grid``, ``photo_size`` and ``grid_box``
(the grid's extent in the photograph's pixels, ``served.grid_box``). A file that cannot be
used gets ``{"image", "error"}`` instead and the rest still run. The exit status is 1 only when
every image failed (2 for a usage or run-folder problem), so a batch with a few bad files still
counts as done. A heatmap that cannot be written (a read-only run folder) keeps the score and
says why in ``heatmap_error``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from PIL import Image

from jaxcerv.data.images import load_image
from jaxcerv.inference import served
from jaxcerv.inference.served import padded_batch
from jaxcerv.model import networks as model_lib
from jaxcerv.runtime.rundir import RunDir, RunError
from jaxcerv.training import steps
from jaxcerv.training.checkpointing import restore_params


def best_checkpoint_dir(workdir: str) -> str:
    """The step directory of the run's selected model: ``checkpoints/best/<best_epoch>`` as
    results.json names it (newest best step when results.json does not say)."""
    run = RunDir(workdir)
    steps = run.checkpoint_steps("best")
    if not steps:
        raise RunError(f"{run.path('checkpoints', 'best')}: no checkpoint; did training finish "
                       "an epoch?")
    best = run.read_results().get("best_epoch") if os.path.isfile(run.results) else None
    if best is not None and best not in steps:
        raise RunError(f"{run.checkpoint_dir('best', best)} (the tested model) is missing: "
                       "rerun the training command to repair it")
    return run.checkpoint_dir("best", best if best is not None else steps[-1])


def run_folder(workdir: str | None, checkpoint: str | None) -> str:
    """``workdir``, else the run that ``checkpoint`` (``<run>/checkpoints/<kind>/<step>``) is in."""
    if workdir is not None:
        return workdir
    if checkpoint is None:
        raise RunError("pass --workdir or --checkpoint")
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(checkpoint))))


class Predictor:
    """A restored model ready to score files; build once, call ``predict`` many times."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        params: Any,
        threshold: float,
        card: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.threshold = threshold
        self.params = params
        # What each prediction says about the model (served.model_card): from_run fills in the
        # run's test metrics and the checkpoint.
        self.card = card or served.model_card(config, threshold, {}, source=None)
        self.image_size = config.grid_size * config.patch_size
        self.batch_size = int(config.eval.batch_size)
        # The eval step training used, so a served probability is the one evaluation computed.
        self._forward = steps.jit_eval_step(config, model_lib.from_config(config))

    @classmethod
    def from_run(cls, workdir: str | None = None, checkpoint: str | None = None) -> Predictor:
        """The best checkpoint of ``workdir``, or the step directory ``checkpoint`` (see module)."""
        run = RunDir(run_folder(workdir, checkpoint))
        config = run.read_config()
        threshold = run.read_threshold()
        like = steps.abstract_params(config, model_lib.from_config(config))
        step_dir = checkpoint or best_checkpoint_dir(run.root)
        params = restore_params(step_dir, like, steps.served_params_key(config))
        card = served.model_card(config, threshold, run.read_results(), os.path.abspath(step_dir))
        return cls(config, params, threshold, card)

    def load(self, path: str) -> np.ndarray:
        """Decode + validate + resize one file as the dataset builders do; raises ImageError."""
        return load_image(
            path,
            image_size=self.image_size,
            patch_size=self.config.patch_size,
            resize=self.config.data.resize,
        )

    def predict_arrays(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Forward uint8 images (N, S, S, 3) in batches of ``batch_size``; a last, partial batch
        is padded only to ``padded_batch`` (one image costs one image's forward pass, not a
        whole batch's; at most log2(batch_size) + 1 compilations)."""
        chunks: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            n = len(batch)
            size = padded_batch(n, self.batch_size)
            if n < size:
                batch = np.concatenate([batch, np.zeros((size - n, *batch.shape[1:]), np.uint8)])
            out = jax.device_get(self._forward(self.params, {"image": batch}))
            for k, v in out.items():
                chunks.setdefault(k, []).append(np.asarray(v)[:n])
        return {k: np.concatenate(v) for k, v in chunks.items()}

    def predict(self, paths: Sequence[str], out_dir: str, **options: Any) -> list[dict[str, Any]]:
        """One result dict per path, in order (see the module); unusable files get
        ``{"image", "error"}``. Streams ``batch_size`` files at a time; ``options``: cmap,
        alpha, save_weights of ``served.predict_images``."""
        return served.predict_images(
            self.predict_arrays, self.card, paths, out_dir, batch_size=self.batch_size, **options
        )


def save_png(pixels: np.ndarray, path: str) -> None:
    """Write an RGB overlay as PNG with zlib level 1: 0.14 s against 0.76 s at Pillow's default
    level 6 for a 1176-px overlay (most of ``predict``'s latency), for files 12% larger."""
    Image.fromarray(pixels).save(path, compress_level=1)


def predict_run(
    paths: Sequence[str],
    out_dir: str | None = None,
    *,
    workdir: str | None = None,
    checkpoint: str | None = None,
    **heatmap_options: Any,
) -> list[dict[str, Any]]:
    """Restore the run and score ``paths`` (heatmaps default to ``<run>/predictions``); an
    exported model is ``served.predict_files``."""
    predictor = Predictor.from_run(workdir, checkpoint)
    out_dir = out_dir or os.path.join(run_folder(workdir, checkpoint), "predictions")
    return predictor.predict(paths, out_dir, **heatmap_options)

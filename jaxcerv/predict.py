"""Predict CIN2+ for image files with a trained run: probability, label, heatmap and regulator.

    python -m jaxcerv.predict --workdir W [--out DIR] IMAGE...
    python -m jaxcerv.predict --checkpoint W/checkpoints/best/12 IMAGE...

``--workdir`` serves the run's selected checkpoint (``best_epoch`` of results.json: the tested one)
with the decision threshold chosen on validation (``W/results.json``) and the config
(``W/config.json``, or the parent folder's for a cross-validation fold ``W/fold_K``).
``--checkpoint`` serves one orbax step directory instead, ``<run>/checkpoints/{best,latest}/<N>``;
the run folder (config, threshold) is then the directory three levels up unless ``--workdir`` says.

Every file is decoded and resized exactly as the dataset builders do (``data.images.read_image``
with the run's grid, patch size and resize policy), so a JPEG or PNG of any size and aspect works.
Stdout gets one JSON line per input, in input order:
``{"image", "probability", "label", "threshold", "heatmap", "regulator"}``, where ``heatmap`` is
the overlay PNG written to ``--out`` (default ``W/predictions``; drawn on the resized model input,
with the regulator's 2-sigma ellipse) and ``regulator`` is the Gaussian fitted to this image's patch
weights, ``[mu_h, mu_v, s_hh, s_hv, s_vv]`` in patch units (null entries if the map is all zero).
A file that cannot be used gets ``{"image", "error"}`` instead and the rest still run. The exit
status is 1 only when every image failed (2 for a usage or run-folder problem), so a batch with a
few bad files still counts as done.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import ml_collections
import numpy as np
from PIL import Image

from jaxcerv import model as model_lib
from jaxcerv import steps, viz
from jaxcerv.checkpointing import restore_params
from jaxcerv.data.images import ImageError, load_image
from jaxcerv.rundir import RunDir, RunError, json_number


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

    def __init__(self, config: ml_collections.ConfigDict, params: Any, threshold: float) -> None:
        self.config = config
        self.threshold = threshold
        self.params = params
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
        params = restore_params(checkpoint or best_checkpoint_dir(run.root), like)
        return cls(config, params, threshold)

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

    def predict(
        self,
        paths: Sequence[str],
        out_dir: str,
        *,
        normalisation: str = "minmax",
        cmap: str = "jet",
        alpha: float = 0.45,
        smooth_sigma: float = 0.0,
    ) -> list[dict[str, Any]]:
        """One result dict per path, in order; unusable files get ``{"image", "error"}``.

        Streams ``batch_size`` files at a time (decoding and overlay writing on a thread pool,
        where Pillow and numpy release the GIL), so memory does not grow with the number of files.
        """
        results: list[dict[str, Any]] = [{"image": os.fspath(p)} for p in paths]
        names = _output_names(paths)
        os.makedirs(out_dir, exist_ok=True)

        def decode(k: int) -> np.ndarray | None:
            try:
                return self.load(paths[k])
            except ImageError as e:
                results[k]["error"] = " ".join(str(e).split())  # one line, whatever Pillow said
                return None

        def write(k: int, image: np.ndarray, weights: np.ndarray, fit: np.ndarray) -> str | None:
            """The overlay's path, or None with the reason in the result (one bad output name,
            e.g. too long for the file system, must not cost the other images their results)."""
            try:
                return _write_overlay(k, image, weights, fit)
            except (OSError, ValueError) as e:
                results[k]["error"] = f"cannot write the heatmap: {' '.join(str(e).split())}"
                return None

        def _write_overlay(k: int, image: np.ndarray, weights: np.ndarray, fit: np.ndarray) -> str:
            overlay = viz.overlay_array(
                image,
                weights,
                normalisation=normalisation,
                cmap=cmap,
                alpha=alpha,
                smooth_sigma=smooth_sigma,
                regulator=fit if viz.regulator_is_drawable(fit) else None,
                patch_size=self.config.patch_size,
            )
            path = os.path.join(out_dir, names[k])
            save_png(overlay, path)
            return path

        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            for start in range(0, len(paths), self.batch_size):
                chunk = range(start, min(start + self.batch_size, len(paths)))
                decoded = list(pool.map(decode, chunk))
                good = [k for k, px in zip(chunk, decoded, strict=True) if px is not None]
                if not good:
                    continue
                pixels = [px for px in decoded if px is not None]
                pred = self.predict_arrays(np.stack(pixels))
                heatmaps = pool.map(
                    write, good, pixels, pred["weights"], pred["regulators"]
                )
                for j, (k, heatmap) in enumerate(zip(good, heatmaps, strict=True)):
                    if heatmap is None:
                        continue
                    prob = float(pred["probabilities"][j])
                    results[k].update(
                        probability=prob,
                        label=int(prob >= self.threshold),
                        threshold=self.threshold,
                        heatmap=heatmap,
                        regulator=[json_number(float(v)) for v in pred["regulators"][j]],
                    )
        return results


def padded_batch(n: int, batch_size: int) -> int:
    """The batch that ``n`` images are padded to: the next power of two, at most ``batch_size``."""
    return min(batch_size, 1 << max(0, n - 1).bit_length())


def save_png(pixels: np.ndarray, path: str) -> None:
    """Write an RGB overlay as PNG with zlib level 1: 0.14 s against 0.76 s at Pillow's default
    level 6 for a 1176-px overlay (most of ``predict``'s latency), for files 12% larger."""
    Image.fromarray(pixels).save(path, compress_level=1)


def _output_names(paths: Sequence[str]) -> list[str]:
    """``<stem>.heatmap.png`` per input, ``<stem>-2.heatmap.png``... when a name is taken."""
    used: set[str] = set()
    names = []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0] or "image"
        name, n = f"{stem}.heatmap.png", 1
        while name in used:
            n += 1
            name = f"{stem}-{n}.heatmap.png"
        used.add(name)
        names.append(name)
    return names


def predict_files(
    workdir: str | None,
    paths: Sequence[str],
    out_dir: str | None = None,
    *,
    checkpoint: str | None = None,
    **heatmap_options: Any,
) -> list[dict[str, Any]]:
    """Restore the run and predict ``paths`` (``out_dir`` default ``<workdir>/predictions``)."""
    predictor = Predictor.from_run(workdir, checkpoint)
    out_dir = out_dir or os.path.join(run_folder(workdir, checkpoint), "predictions")
    return predictor.predict(paths, out_dir, **heatmap_options)


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m jaxcerv.predict",
        description="Score image files (JPEG/PNG, any size) with a trained jaxcerv run; one JSON "
        "line per image on stdout. Exit status 1 only if every image failed.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--workdir", help="run folder (best checkpoint, threshold, config)")
    p.add_argument(
        "--checkpoint",
        help="orbax step directory, e.g. W/checkpoints/latest/7 (run folder: three levels up, "
        "unless --workdir)",
    )
    p.add_argument("--out", help="folder for the heatmap PNGs (default: <workdir>/predictions)")
    p.add_argument("--normalisation", choices=("minmax", "percentile"), default="minmax")
    p.add_argument("--cmap", default="jet", help="matplotlib colormap name")
    p.add_argument("--alpha", type=float, default=0.45, help="heatmap opacity in [0, 1]")
    p.add_argument("--smooth", type=float, default=0.0, help="Gaussian blur sigma, in patches")
    args = p.parse_args(argv)
    if args.workdir is None and args.checkpoint is None:
        p.error("pass --workdir or --checkpoint")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    try:
        results = predict_files(
            args.workdir,
            args.images,
            args.out,
            checkpoint=args.checkpoint,
            normalisation=args.normalisation,
            cmap=args.cmap,
            alpha=args.alpha,
            smooth_sigma=args.smooth,
        )
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in results:
        print(json.dumps(r), flush=True)
    return 1 if all("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

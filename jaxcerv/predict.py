"""Predict CIN2+ for image files with a trained run: probability, label, heatmap and regulator.

    python -m jaxcerv.predict --workdir W [--out DIR] IMAGE...
    python -m jaxcerv.predict --checkpoint W/checkpoints/best/12 IMAGE...

``--workdir`` serves the run's best checkpoint (lowest validation loss, the one that was tested)
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
import math
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image

from jaxcerv import conv, train, viz
from jaxcerv import model as model_lib
from jaxcerv.data.images import ImageError, load_image


class RunError(RuntimeError):
    """The run folder or checkpoint cannot serve predictions (message says what is missing)."""


def find_config_file(workdir: str) -> str:
    """``workdir/config.json``, or the parent's for a cross-validation fold ``workdir/fold_K``."""
    for folder in (workdir, os.path.dirname(os.path.abspath(workdir))):
        path = os.path.join(folder, "config.json")
        if os.path.isfile(path):
            return path
    raise RunError(f"{workdir}: no config.json here or in the parent folder; is it a run folder?")


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a run saved (JSON lists stand in for tuples; the model accepts both)."""
    with open(find_config_file(workdir)) as f:
        return ml_collections.ConfigDict(json.load(f))


def read_threshold(workdir: str) -> float:
    path = os.path.join(workdir, "results.json")
    if not os.path.isfile(path):
        raise RunError(f"{path} is missing: the run has not finished evaluating")
    with open(path) as f:
        results = json.load(f)
    if "threshold" not in results:
        hint = " (cross-validation: pass --workdir W/fold_K)" if "folds" in results else ""
        raise RunError(f"{path} has no decision threshold{hint}")
    return float(results["threshold"])


def best_checkpoint_dir(workdir: str) -> str:
    """The newest step directory of ``workdir/checkpoints/best`` (orbax keeps one)."""
    root = os.path.join(workdir, "checkpoints", "best")
    steps = sorted(int(d) for d in os.listdir(root) if d.isdigit()) if os.path.isdir(root) else []
    if not steps:
        raise RunError(f"{root}: no checkpoint; did training finish an epoch?")
    return os.path.join(root, str(steps[-1]))


def restore_params(step_dir: str, like: Any) -> Any:
    """Only the model parameters of a saved train state (no optimizer state or regulators).

    A partial orbax restore: it needs neither the number of training images nor the optimizer.
    """
    state_dir = os.path.abspath(os.path.join(step_dir, "state"))
    if not os.path.isdir(state_dir):
        raise RunError(f"{step_dir}: not an orbax step directory of a train state (no state/)")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = {
        "params": jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), like
        )
    }
    with ocp.PyTreeCheckpointer() as ckptr:
        out = ckptr.restore(
            state_dir,
            args=ocp.args.PyTreeRestore(
                item=target,
                restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True,
            ),
        )
    return out["params"]


def run_folder(workdir: str | None, checkpoint: str | None) -> str:
    """``workdir``, else the run that ``checkpoint`` (``<run>/checkpoints/<kind>/<step>``) is in."""
    if workdir is not None:
        return workdir
    if checkpoint is None:
        raise RunError("pass --workdir or --checkpoint")
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(checkpoint))))


def _json_number(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


class Predictor:
    """A restored model ready to score files; build once, call ``predict`` many times."""

    def __init__(self, config: ml_collections.ConfigDict, params: Any, threshold: float) -> None:
        self.config = config
        self.threshold = threshold
        self.params = params
        self.image_size = config.grid_size * config.patch_size
        self.batch_size = int(config.eval.batch_size)
        # train's own eval step, so a served probability is the one evaluation computed.
        self._forward = jax.jit(
            train.make_eval_step(model_lib.from_config(config), config.regulator.fit_on),
            compiler_options=conv.compiler_options(config.model.conv_impl),
        )

    @classmethod
    def from_run(cls, workdir: str | None = None, checkpoint: str | None = None) -> Predictor:
        """The best checkpoint of ``workdir``, or the step directory ``checkpoint`` (see module)."""
        workdir = run_folder(workdir, checkpoint)
        config = read_config(workdir)
        threshold = read_threshold(workdir)
        model = model_lib.from_config(config)
        side = config.grid_size * config.patch_size
        like = jax.eval_shape(
            lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, side, side, 3), jnp.uint8))[
                "params"
            ]
        )
        params = restore_params(checkpoint or best_checkpoint_dir(workdir), like)
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

        def write(k: int, image: np.ndarray, weights: np.ndarray, fit: np.ndarray) -> str:
            overlay = viz.overlay_array(
                image,
                weights,
                normalisation=normalisation,
                cmap=cmap,
                alpha=alpha,
                smooth_sigma=smooth_sigma,
                regulator=fit if regulator_is_drawable(fit) else None,
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
                    prob = float(pred["probabilities"][j])
                    results[k].update(
                        probability=prob,
                        label=int(prob >= self.threshold),
                        threshold=self.threshold,
                        heatmap=heatmap,
                        regulator=[_json_number(float(v)) for v in pred["regulators"][j]],
                    )
        return results


def padded_batch(n: int, batch_size: int) -> int:
    """The batch that ``n`` images are padded to: the next power of two, at most ``batch_size``."""
    return min(batch_size, 1 << max(0, n - 1).bit_length())


def regulator_is_drawable(params: np.ndarray) -> bool:
    """Finite, positive-definite covariance (an ellipse exists); others are reported, not drawn."""
    s_hh, s_hv, s_vv = float(params[2]), float(params[3]), float(params[4])
    return s_hh > 0 and s_hh * s_vv - s_hv**2 > 0


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

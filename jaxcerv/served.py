"""Load and run an exported model (``jaxcerv export``) with jax and numpy only.

Nothing here imports flax, orbax or the training code, so a deployment needs the ``.jaxexport``
file, its ``.json`` sidecar and ``pip install jax numpy`` (pillow to decode images).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import jax
import numpy as np

FORMAT = "jaxcerv.jaxexport/1"


class ExportError(RuntimeError):
    """The exported model or its sidecar cannot be used (message names the file)."""


def sidecar_path(model_path: str) -> str:
    return model_path + ".json"


class ServedModel:
    """A deserialised inference function with its sidecar: ``model(images) -> (probs, weights)``.

    ``images``: uint8 (B, S, S, 3) with S = ``meta["image_size"]``, resized as ``meta["resize"]``
    says; any B.
    """

    def __init__(self, path: str) -> None:
        meta_path = sidecar_path(path)
        for p in (path, meta_path):
            if not os.path.isfile(p):
                raise ExportError(f"{p}: not found (jaxcerv export writes the model and its .json)")
        with open(meta_path) as f:
            self.meta: dict[str, Any] = json.load(f)
        if self.meta.get("format") != FORMAT:
            raise ExportError(f"{meta_path}: format {self.meta.get('format')!r}, want {FORMAT!r}")
        with open(path, "rb") as f:
            try:
                self.exported = jax.export.deserialize(bytearray(f.read()))
            except ImportError:  # jax's own message names the missing package (flatbuffers)
                raise
            except Exception as e:  # a truncated or foreign file: one line, not a trace
                raise ExportError(f"{path}: not a jax.export file ({type(e).__name__})") from e
        cpu = jax.default_backend() == "cpu"
        options = (self.meta.get("cpu_compiler_options") or None) if cpu else None
        self._call: Callable[[np.ndarray], tuple[jax.Array, jax.Array]] = jax.jit(
            self.exported.call, compiler_options=options
        )

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = self.image_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise ExportError(
                f"images must be uint8 (B, {s}, {s}, 3), got {images.dtype} {images.shape}"
            )
        probs, weights = jax.device_get(self._call(images))
        return np.asarray(probs), np.asarray(weights)


SYNTHETIC_WARNING = (
    "this model was trained on synthetic images only (data set synthetic_cervix): it has never "
    "seen a real photograph and its output on one means nothing"
)
CLASS_NAMES = ("normal or CIN1", "CIN2+")  # label 0 / 1


def provenance(meta: dict[str, Any]) -> dict[str, Any]:
    """What a result says about the model that made it (from the export sidecar)."""
    test = meta.get("test_metrics") or {}
    return {
        "dataset": meta["dataset"],
        "config_digest": meta["config_digest"],
        "source": meta.get("source"),
        "test_roc_auc": test.get("roc_auc"),
        "test_n": test.get("n"),
    }


def padded_batch(n: int, batch_size: int) -> int:
    """The batch that ``n`` images are padded to: the next power of two, at most ``batch_size``
    (a handful of compiled sizes; one image costs one image's forward pass)."""
    return min(batch_size, 1 << max(0, n - 1).bit_length())


def predict_files(
    model_path: str,
    paths: Sequence[str],
    out_dir: str | None = None,
    *,
    batch_size: int = 8,
    cmap: str = "jet",
    alpha: float = 0.45,
    warn: TextIO | None = None,
) -> list[dict[str, Any]]:
    """Score image files with an exported model: one result dict per path, in order.

    Each result: image, probability, label (1 = CIN2+), class, threshold, heatmap (a PNG in
    ``out_dir``, default ``<model>.predictions/``: the photograph at its own aspect with the
    weights, colour bar, probability and threshold), model (provenance), and ``warning`` when the
    model was trained on synthetic data (said once on ``warn``, default stderr). A file that cannot
    be used gets ``{"image", "error"}``.
    """
    from jaxcerv import viz
    from jaxcerv.data.images import ImageError, read_image

    model = ServedModel(model_path)
    meta = model.meta
    out_dir = out_dir or os.path.splitext(model_path)[0] + ".predictions"
    os.makedirs(out_dir, exist_ok=True)
    warning = SYNTHETIC_WARNING if meta.get("trained_on_synthetic_data") else ""
    if warning:
        print(f"warning: {warning}", file=sys.stderr if warn is None else warn, flush=True)
    results: list[dict[str, Any]] = [{"image": os.fspath(p)} for p in paths]
    names = heatmap_names(paths)
    for start in range(0, len(paths), batch_size):
        decoded = {}
        for k in range(start, min(start + batch_size, len(paths))):
            try:
                decoded[k] = read_image(
                    paths[k], image_size=model.image_size, patch_size=meta["patch_size"],
                    resize=meta["resize"],
                )
            except ImageError as e:
                results[k]["error"] = " ".join(str(e).split())
        if not decoded:
            continue
        pixels = np.stack([d.pixels for d in decoded.values()])
        n = len(pixels)
        pad = padded_batch(n, batch_size) - n
        padding = np.zeros((pad, *pixels.shape[1:]), np.uint8)
        probs, weights = model(np.concatenate([pixels, padding]))
        for j, (k, d) in enumerate(decoded.items()):
            prob = float(probs[j])
            label = int(prob >= model.threshold)
            photo, heat = viz.photo_view(d.pixels, weights[j], d.width, d.height, meta["resize"])
            figure = viz.clinician_figure(
                photo, heat, prob, model.threshold, cmap=cmap, alpha=alpha, warning=warning,
                title=os.path.basename(paths[k]),
            )
            results[k].update(
                probability=prob, label=label, **{"class": CLASS_NAMES[label]},
                threshold=model.threshold,
                heatmap=viz.save_figure(figure, os.path.join(out_dir, names[k])),
                model=provenance(meta),
            )
            if warning:
                results[k]["warning"] = warning
    return results


def heatmap_names(paths: Sequence[str]) -> list[str]:
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

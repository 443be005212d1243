"""Load and run an exported model (``jaxcerv export``) with jax and numpy only.

Nothing here imports flax, orbax or the training code, so a deployment needs the ``.jaxexport``
file, its ``.json`` sidecar and ``pip install jax numpy`` (pillow to decode images).
"""

from __future__ import annotations

import hashlib
import json
import math
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
        try:
            with open(meta_path) as f:
                self.meta: dict[str, Any] = json.load(f)
        except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
            raise ExportError(f"{meta_path}: not a valid sidecar JSON ({e}); export the model "
                              "again (jaxcerv export)") from None
        if not isinstance(self.meta, dict) or self.meta.get("format") != FORMAT:
            got = self.meta.get("format") if isinstance(self.meta, dict) else None
            raise ExportError(f"{meta_path}: format {got!r}, want {FORMAT!r}")
        with open(path, "rb") as f:
            blob = f.read()
        if "sha256" not in self.meta:
            raise ExportError(f"{meta_path} records no sha256 of {path}: export the model again "
                              "(jaxcerv export)")
        if hashlib.sha256(blob).hexdigest() != self.meta["sha256"]:
            raise ExportError(f"{path} does not match the sha256 in {meta_path}: the file is "
                              "damaged or not the one exported with it; export the model again "
                              "(jaxcerv export)")
        try:
            self.exported = jax.export.deserialize(bytearray(blob))
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

    def predict_arrays(self, images: np.ndarray, batch_size: int = 8) -> dict[str, np.ndarray]:
        """``probabilities`` and ``weights`` for any number of images, ``batch_size`` at a time,
        a last partial batch padded to ``padded_batch`` (few compiled shapes)."""
        probs, weights = [], []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            n = len(batch)
            padding = np.zeros((padded_batch(n, batch_size) - n, *batch.shape[1:]), np.uint8)
            p, w = self(np.concatenate([batch, padding]))
            probs.append(p[:n])
            weights.append(w[:n])
        return {"probabilities": np.concatenate(probs), "weights": np.concatenate(weights)}

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
Forward = Callable[[np.ndarray], dict[str, np.ndarray]]


def config_digest(config: Any) -> str:
    """sha256 of the config's canonical JSON: two exports of the same run say the same."""
    text = json.dumps(config.to_dict(), sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()


def model_card(config: Any, threshold: float, results: dict, source: str | None) -> dict[str, Any]:
    """What a caller needs to feed the model, and where the model came from (the export sidecar,
    and every prediction's ``model`` field)."""
    return {
        "image_size": config.grid_size * config.patch_size,
        "grid_size": config.grid_size,
        "patch_size": config.patch_size,
        "resize": config.data.resize,
        "threshold": threshold,
        "dataset": config.data.name,
        "trained_on_synthetic_data": config.data.name == "synthetic_cervix",
        "config_digest": config_digest(config),
        "test_metrics": results.get("test", {}),
        "best_epoch": results.get("best_epoch"),
        "source": source,
    }


def provenance(card: dict[str, Any]) -> dict[str, Any]:
    """The ``model`` field of a prediction."""
    test = card.get("test_metrics") or {}
    return {
        "dataset": card["dataset"],
        "config_digest": card["config_digest"],
        "source": card.get("source"),
        "test_roc_auc": test.get("roc_auc"),
        "test_n": test.get("n"),
    }


def padded_batch(n: int, batch_size: int) -> int:
    """The batch that ``n`` images are padded to: the next power of two, at most ``batch_size``
    (a handful of compiled sizes; one image costs one image's forward pass)."""
    return min(batch_size, 1 << max(0, n - 1).bit_length())


def predict_files(
    model_path: str, paths: Sequence[str], out_dir: str | None = None, **options: Any
) -> list[dict[str, Any]]:
    """``predict_images`` with an exported model (``out_dir`` default ``<model>.predictions``)."""
    model = ServedModel(model_path)
    out_dir = out_dir or os.path.splitext(model_path)[0] + ".predictions"
    return predict_images(model.predict_arrays, model.meta, paths, out_dir, **options)


def predict_images(
    forward: Forward,
    card: dict[str, Any],
    paths: Sequence[str],
    out_dir: str,
    *,
    batch_size: int = 8,
    cmap: str = "jet",
    alpha: float = 0.45,
    warn: TextIO | None = None,
) -> list[dict[str, Any]]:
    """Score image files: one result dict per path, in order, ``batch_size`` files at a time.

    ``forward`` maps uint8 images (n, S, S, 3) to ``probabilities`` (n,), ``weights`` (n, H, W)
    and optionally ``regulators`` (n, 5); ``card`` is ``model_card``'s dict. Each result: image,
    probability, label (1 = CIN2+), class, threshold, heatmap (a PNG in ``out_dir``: the
    photograph at its own aspect with the weights, a colour bar, probability and threshold),
    model (provenance), regulator when ``forward`` gives one, and ``warning`` when the model was
    trained on synthetic data (also said once on ``warn``, default stderr). A file that cannot be
    read, or whose heatmap cannot be written, gets ``{"image", "error"}``.
    """
    from jaxcerv.data.images import ImageError, read_image
    from jaxcerv.reporting import viz

    os.makedirs(out_dir, exist_ok=True)
    threshold = float(card["threshold"])
    warning = SYNTHETIC_WARNING if card.get("trained_on_synthetic_data") else ""
    if warning:
        print(f"warning: {warning}", file=sys.stderr if warn is None else warn, flush=True)
    results: list[dict[str, Any]] = [{"image": os.fspath(p)} for p in paths]
    names = heatmap_names(paths)
    for start in range(0, len(paths), batch_size):
        decoded = {}
        for k in range(start, min(start + batch_size, len(paths))):
            try:
                decoded[k] = read_image(
                    paths[k], image_size=card["image_size"], patch_size=card["patch_size"],
                    resize=card["resize"],
                )
            except ImageError as e:
                results[k]["error"] = " ".join(str(e).split())  # one line, whatever Pillow said
        if not decoded:
            continue
        pred = forward(np.stack([d.pixels for d in decoded.values()]))
        for j, (k, d) in enumerate(decoded.items()):
            prob = float(pred["probabilities"][j])
            label = int(prob >= threshold)
            weights = pred["weights"][j] if "weights" in pred else np.zeros((0, 0))
            has_heat = weights.size > 0  # a whole-image model has no patch weights
            photo, heat = viz.photo_view(d.pixels, weights if has_heat else np.zeros((1, 1)),
                                         d.width, d.height, card["resize"])
            figure = viz.clinician_figure(
                photo, heat if has_heat else None, prob, threshold, cmap=cmap, alpha=alpha,
                warning=warning,
                title=os.path.basename(paths[k]),
            )
            try:
                heatmap = viz.save_figure(figure, os.path.join(out_dir, names[k]))
            except (OSError, ValueError) as e:  # e.g. a name too long: the others still run
                results[k]["error"] = f"cannot write the heatmap: {' '.join(str(e).split())}"
                continue
            results[k].update(
                probability=prob, label=label, **{"class": CLASS_NAMES[label]},
                threshold=threshold, heatmap=heatmap, model=provenance(card),
            )
            if "regulators" in pred:
                results[k]["regulator"] = [_json_number(v) for v in pred["regulators"][j]]
            if warning:
                results[k]["warning"] = warning
    return results


def _json_number(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


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

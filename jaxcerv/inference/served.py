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
    save_weights: bool = False,
    figures: bool = True,
    titles: Sequence[str] | None = None,
    warn: TextIO | None = None,
) -> list[dict[str, Any]]:
    """Score image files: one result dict per path, in order, ``batch_size`` files at a time.

    ``forward`` maps uint8 images (n, S, S, 3) to ``probabilities`` (n,), ``weights`` (n, H, W)
    and optionally ``regulators`` (n, 5); ``card`` is ``model_card``'s dict. Each result: image,
    probability, label (1 = CIN2+), class, threshold, heatmap (a PNG in ``out_dir``: the
    photograph at its own aspect with the weights, a colour bar, probability and threshold),
    model (provenance), regulator when ``forward`` gives one, and ``warning`` when the model was
    trained on synthetic data (also said once on ``warn``, default stderr). ``save_weights``:
    the patch weights the heatmap draws go to ``<stem>.weights.npy`` too, and the result gains
    ``weights_file``, ``grid`` and ``grid_box`` (``weights_record``). ``figures`` False: no
    heatmap PNG (``heatmap`` null; the serve page draws the weights itself). ``titles``: what each
    figure calls its photograph (default: the file's name). A file that cannot be read gets
    ``{"image", "error"}``; one whose heatmap or weights cannot be written (a read-only folder, a
    name too long) keeps its score and says why in ``heatmap_error``.
    """
    from jaxcerv.data.images import ImageError, read_image
    from jaxcerv.reporting import viz

    try:
        os.makedirs(out_dir, exist_ok=True)
        out_problem = ""
    except OSError as e:  # e.g. a read-only run folder: the scores still come
        out_problem = _heatmap_error(e)
    threshold = float(card["threshold"])
    warning = SYNTHETIC_WARNING if card.get("trained_on_synthetic_data") else ""
    if warning:
        print(f"warning: {warning}", file=sys.stderr if warn is None else warn, flush=True)
    results: list[dict[str, Any]] = [{"image": os.fspath(p)} for p in paths]
    stems = output_stems(paths)
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
            results[k].update(
                probability=prob, label=label, **{"class": CLASS_NAMES[label]},
                threshold=threshold, model=provenance(card),
            )
            weights = pred["weights"][j] if "weights" in pred else np.zeros((0, 0))
            has_heat = weights.size > 0  # a whole-image model has no patch weights
            try:
                if out_problem:
                    raise OSError(out_problem)
                heatmap = None
                if figures:
                    photo, heat = viz.photo_view(
                        d.pixels, weights if has_heat else np.zeros((1, 1)), d.width, d.height,
                        card["resize"],
                    )
                    figure = viz.clinician_figure(
                        photo, heat if has_heat else None, prob, threshold, cmap=cmap,
                        alpha=alpha, warning=warning,
                        title=titles[k] if titles else os.path.basename(paths[k]),
                    )
                    heatmap = viz.save_figure(
                        figure, os.path.join(out_dir, f"{stems[k]}.heatmap.png")
                    )
                results[k]["heatmap"] = heatmap
                if save_weights:
                    results[k].update(weights_record(
                        weights if has_heat else None, os.path.join(out_dir, stems[k]),
                        d.width, d.height, card["image_size"], card["resize"],
                    ))
            except (OSError, ValueError) as e:  # e.g. a name too long: the score stays
                results[k]["heatmap_error"] = out_problem or _heatmap_error(e)
            if "regulators" in pred:
                results[k]["regulator"] = [_json_number(v) for v in pred["regulators"][j]]
            if warning:
                results[k]["warning"] = warning
    return results


def _heatmap_error(e: Exception) -> str:
    return f"cannot write the heatmap: {' '.join(str(e).split())}; pass --out=DIR"


def _json_number(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def grid_box(width: int, height: int, image_size: int, resize: str) -> list[float]:
    """Where the model's patch grid lies on a width x height photograph, in the photograph's
    pixels (after EXIF orientation): [left, top, right, bottom]. "stretch" squashes the whole
    photograph onto the grid: [0, 0, width, height]. "pad" letterboxes it
    (``data.images.letterbox_box``), so the grid overhangs the photograph by the padding, scaled
    to photograph pixels (negative left/top). Patch (row r, column c) of a (rows, cols) grid covers
    x in left + [c, c+1] * (right-left) / cols and y in top + [r, r+1] * (bottom-top) / rows."""
    if resize != "pad":
        return [0.0, 0.0, float(width), float(height)]
    from jaxcerv.data.images import letterbox_box

    x0, y0, w, h = letterbox_box(width, height, image_size)
    sx, sy = width / w, height / h
    return [-x0 * sx, -y0 * sy, (image_size - x0) * sx, (image_size - y0) * sy]


def weights_record(
    weights: np.ndarray | None, stem: str, width: int, height: int, image_size: int, resize: str
) -> dict[str, Any]:
    """Write ``stem + '.weights.npy'`` (float32 (rows, cols), row 0 at the top of the photograph)
    and say how it maps onto the photograph: ``weights_file``, ``grid`` [rows, cols],
    ``photo_size`` [width, height] and ``grid_box`` (``grid_box``). A whole-image model has no
    patch weights: ``weights_file`` and ``grid`` are null."""
    record: dict[str, Any] = {"weights_file": None, "grid": None, "photo_size": [width, height],
                              "grid_box": grid_box(width, height, image_size, resize)}
    if weights is not None:
        path = stem + ".weights.npy"
        grid = np.asarray(weights, np.float32)
        np.save(path, grid)
        record.update(weights_file=path, grid=list(grid.shape))
    return record


def output_stems(paths: Sequence[str]) -> list[str]:
    """One output stem per input, ``<stem>``, ``<stem>-2``... when a name is taken:
    ``<stem>.heatmap.png`` and ``<stem>.weights.npy`` belong to the same input."""
    used: set[str] = set()
    stems = []
    for path in paths:
        base = os.path.splitext(os.path.basename(path))[0] or "image"
        stem, n = base, 1
        while stem in used:
            n += 1
            stem = f"{base}-{n}"
        used.add(stem)
        stems.append(stem)
    return stems

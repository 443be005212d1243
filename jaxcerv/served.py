"""Load and run an exported model (``jaxcerv export``) with jax and numpy only.

Nothing here imports flax, orbax or the training code, so a deployment needs the ``.jaxexport``
file, its ``.json`` sidecar and ``pip install jax numpy`` (pillow to decode images).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

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

"""Export a trained run's inference function: `jaxcerv export --workdir W --out model.jaxexport`.

The file holds ``jax.export``'s serialisation of ``images -> (probabilities, patch weights)``
with the parameters baked in and the batch dimension symbolic, lowered for CPU, CUDA and TPU;
``model.jaxexport.json`` next to it says what the model expects and where it came from (image
and patch size, resize policy, decision threshold, data set, config digest, test metrics). Serving
it needs jax and numpy only (``jaxcerv.inference.served``): no flax, no orbax, no training code.

Calling convention of the deserialised function: uint8 images (B, S, S, 3), S = grid x patch
size, resized as in training -> float32 probabilities (B,) and patch weights (B, H, W).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxcerv.inference import served
from jaxcerv.inference.predict import Predictor
from jaxcerv.model import conv
from jaxcerv.model import networks as model_lib
from jaxcerv.runtime.rundir import RunError

PLATFORMS = ("cpu", "cuda", "tpu")


def inference_fn(config: ml_collections.ConfigDict, params: Any):
    """uint8 images (B, S, S, 3) -> (probabilities (B,), weights (B, H, W)), params closed over.
    A whole-image model has no patch weights: (B, 0, 0), which ``predict`` draws as no heatmap."""
    model = model_lib.from_config(config)

    def infer(images: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = model.apply({"params": params}, images, train=False)
        weights = out.weights
        if weights is None:
            weights = jnp.zeros((images.shape[0], 0, 0), jnp.float32)
        return jax.nn.sigmoid(out.logits), weights

    return infer


def export_model(
    config: ml_collections.ConfigDict, params: Any, platforms: tuple[str, ...] = PLATFORMS
) -> jax.export.Exported:
    """Trace once with a symbolic batch ``b``: one file serves any batch size."""
    side = config.grid_size * config.patch_size
    (batch,) = jax.export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((batch, side, side, 3), jnp.uint8)
    return jax.export.export(jax.jit(inference_fn(config, params)), platforms=platforms)(spec)


def sidecar(card: dict[str, Any], config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The model card plus what the file itself needs: format, jax version, platforms."""
    return {
        "format": served.FORMAT,
        **card,
        "jax_version": jax.__version__,
        "platforms": list(PLATFORMS),
        # Applied by the loader when it runs on CPU: the faster convolution path (see conv.py).
        "cpu_compiler_options": conv.compiler_options(config.model.conv_impl) or {},
    }


def export_run(workdir: str | None, out: str, checkpoint: str | None = None) -> dict[str, Any]:
    """Write ``out`` and ``out + '.json'`` from the run's selected checkpoint (or ``checkpoint``);
    returns the sidecar."""
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise RunError(f"--out {out}: folder {folder} does not exist")
    predictor = Predictor.from_run(workdir, checkpoint)
    blob = export_model(predictor.config, predictor.params).serialize()
    # Checked by the loader: flipped bytes in the file are refused, never served.
    meta = {**sidecar(predictor.card, predictor.config), "sha256": hashlib.sha256(blob).hexdigest()}
    with open(out, "wb") as f:
        f.write(blob)
    with open(served.sidecar_path(out), "w") as f:
        json.dump(meta, f, indent=1)
    return meta

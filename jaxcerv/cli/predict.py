"""``jaxcerv predict (--workdir=DIR | --checkpoint=STEP_DIR | --model=FILE) [--save_weights]
IMAGE...``: one JSON line per image on stdout (``inference.predict``, ``inference.served``).

Exit status 0 when some image was scored (one whose heatmap could not be written still counts:
its line keeps the score and says ``heatmap_error``), 1 when every image failed, 2 for a usage or
run-folder problem (no score).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence

from absl import flags

from jaxcerv.cli import common


def define() -> Callable[[list[str]], int]:
    workdir = flags.DEFINE_string("workdir", None, "Run folder: best checkpoint, threshold.")
    checkpoint = flags.DEFINE_string(
        "checkpoint", None, "An orbax step directory, e.g. W/checkpoints/latest/7."
    )
    model = flags.DEFINE_string(
        "model", None, "An exported model (jaxcerv export): runs with jax and numpy only."
    )
    out = flags.DEFINE_string("out", None, "Folder for the heatmap PNGs (default: "
                              "<workdir>/predictions, or <model>.predictions).")
    cmap = flags.DEFINE_string("cmap", "jet", "Matplotlib colour map of the heatmap.")
    alpha = flags.DEFINE_float("alpha", 0.45, "Heatmap opacity in [0, 1].")
    save_weights = flags.DEFINE_bool(
        "save_weights", False, "Also write <stem>.weights.npy: the patch-weight grid, float32."
    )

    def main(argv: list[str]) -> int:
        return run(argv[1:], workdir=workdir.value, checkpoint=checkpoint.value,
                   model=model.value, out=out.value, cmap=cmap.value, alpha=alpha.value,
                   save_weights=save_weights.value)

    return main


def run(images: Sequence[str], *, workdir: str | None = None, checkpoint: str | None = None,
        model: str | None = None, out: str | None = None, cmap: str = "jet",
        alpha: float = 0.45, save_weights: bool = False) -> int:
    """Score ``images``, print their JSON lines; returns the exit status (see the module)."""
    if not images or (workdir, checkpoint, model) == (None, None, None):
        common.fail("pass --workdir, --checkpoint or --model, then IMAGE...", common.USAGE)
    if model is not None and (workdir or checkpoint):
        common.fail("--model serves an exported file: drop --workdir/--checkpoint", common.USAGE)
    options = dict(cmap=cmap, alpha=alpha, save_weights=save_weights)
    try:
        if model is not None:
            from jaxcerv.inference import served
            results = served.predict_files(model, images, out, **options)
        else:
            from jaxcerv.inference import predict
            results = predict.predict_run(images, out, workdir=workdir, checkpoint=checkpoint,
                                          **options)
    except (OSError, RuntimeError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return common.USAGE
    for r in results:
        print(json.dumps(r), flush=True)
    return common.STOPPED if all("error" in r for r in results) else 0

"""``jaxcerv report --workdir=DIR [--out=DIR] [--compare=W2,W3] [--gallery=8]``: the HTML report of
a finished run (``reporting.report``), by default in ``W/report/``. Exit 2 for a usage problem or
a folder that cannot be read or written (one line naming it)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from absl import flags

from jaxcerv.cli import common


def define() -> Callable[[list[str]], int]:
    workdir = flags.DEFINE_string("workdir", None, "The run folder.", required=True)
    out = flags.DEFINE_string("out", None, "Folder to write the report to (default W/report; "
                              "for a read-only run folder).")
    compare = flags.DEFINE_list("compare", [], "Other finished runs drawn on the ROC plot.")
    gallery = flags.DEFINE_integer("gallery", 8, "Number of test images in the gallery.")
    evolution = flags.DEFINE_integer("evolution_images", 3, "Images in the regulator evolution.")
    epochs = flags.DEFINE_list("epochs", None, "Regulator-evolution epochs (default 1,32,48).")
    normalisation = flags.DEFINE_enum(
        "normalisation", "minmax", ["minmax", "percentile"], "Heatmap colour scaling."
    )
    percentiles = flags.DEFINE_list("percentiles", ["2", "98"], "LO,HI for percentile scaling.")
    cmap = flags.DEFINE_string("cmap", "jet", "Matplotlib colour map of the heatmaps.")
    alpha = flags.DEFINE_float("alpha", 0.45, "Heatmap opacity in [0, 1].")
    smooth = flags.DEFINE_float("smooth", 0.0, "Heatmap blur sigma, in patches.")

    def main(argv: list[str]) -> int:
        common.no_arguments(argv)
        try:
            lo, hi = (float(p) for p in percentiles.value)
            epoch_list = [int(e) for e in epochs.value] if epochs.value else None
        except ValueError:
            common.fail("--percentiles takes LO,HI and --epochs whole numbers", common.USAGE)
        from jaxcerv.reporting import report
        style = report.HeatmapStyle(normalisation.value, (lo, hi), cmap.value, alpha.value,
                                    smooth.value)
        return run(workdir.value, out=out.value, compare=compare.value, style=style,
                   epochs=epoch_list, num_gallery=gallery.value, num_evolution=evolution.value)

    return main


def run(workdir: str, *, out: str | None = None, compare: Sequence[str] = (), style=None,
        epochs: Sequence[int] | None = None, num_gallery: int = 8,
        num_evolution: int = 3) -> int:
    """Write the report, print its path; returns the exit status."""
    from jaxcerv.reporting import report
    from jaxcerv.runtime.rundir import RunError
    try:
        baselines = {os.path.basename(os.path.abspath(w)): report.load_test_curve(w)
                     for w in compare}
        path = report.write_report(workdir, roc_baselines=baselines, style=style, epochs=epochs,
                                   num_gallery=num_gallery, num_evolution=num_evolution,
                                   out_dir=out)
    except (OSError, ValueError, RunError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return common.USAGE
    print(path, flush=True)
    return 0

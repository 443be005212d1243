"""A suite's figures: the normalised multi-metric comparison (Fig. 4a) and the same test images
with and without the regulator (Fig. 5c); Fig. 4b is ``viz.roc_curves``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxcerv.experiments.results import METRICS, Row
from jaxcerv.experiments.tables import normalised_scores


def fig4a(records: Sequence[dict], path: str) -> str:
    from jaxcerv.reporting import viz
    scores = normalised_scores(records)
    fig = viz.new_figure(max(7.0, 1.3 * len(METRICS) + 0.2 * len(records)), 4.8)
    ax = fig.add_subplot()
    width = 0.8 / len(records)
    x = np.arange(len(METRICS))
    for i, r in enumerate(records):
        ax.bar(x + (i - (len(records) - 1) / 2) * width, scores[i], width, label=r["label"])
    ax.set_xticks(x, [t for _, t in METRICS])
    ax.set(ylabel="Pooled value / best row's", ylim=(0, 1.05),
           title="Normalised multi-metric comparison (Fig. 4a)")
    ax.legend(fontsize="x-small", ncol=2, loc="lower left")
    return viz.save_figure(fig, path)


def fig5c(with_reg: Row, without: Row, source: Any, records: Any, patch_size: int,
          path: str, n: int = 4) -> str | None:
    """The same CIN2+ test images: heatmap with the regulator beside the heatmap without, the
    lesion patches outlined (Fig. 5c)."""
    from jaxcerv.reporting import viz
    if with_reg.weights is None or without.weights is None or records.truth_lesion is None:
        return None
    at = {str(i): k for k, i in enumerate(records.ids)}
    common = [i for i in with_reg.ids if i in set(without.ids)]
    chosen = [i for i in common if records.labels[at[i]] == 1
              and records.truth_lesion[at[i]].any()][:n]
    if not chosen:
        return None
    fig = viz.new_figure(10.0, 3.4 * len(chosen))
    axes = fig.subplots(len(chosen), 3, squeeze=False)
    for r, image_id in enumerate(chosen):
        k = at[image_id]
        image = np.asarray(source[k]["image"])
        lesion = np.kron(records.truth_lesion[k], np.ones((patch_size, patch_size)))
        axes[r, 0].imshow(image)
        axes[r, 0].set_title(f"{image_id} (CIN2+)")
        for c, row in ((1, with_reg), (2, without)):
            j = int(np.flatnonzero(row.ids == image_id)[0])
            axes[r, c].imshow(viz.overlay_array(image, row.weights[j], patch_size=patch_size))
            axes[r, c].set_title(row.variant.label, fontsize="small")
        for c in range(3):
            axes[r, c].contour(lesion, levels=[0.5], colors="white", linewidths=1.2)
            axes[r, c].set_axis_off()
    fig.suptitle("Fig. 5c: heatmaps with and without the regulator (white: lesion patches)")
    return viz.save_figure(fig, path)

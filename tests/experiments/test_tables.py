"""The suite tables: normalised scores and the caption."""

from __future__ import annotations

import numpy as np
from jaxcerv.configs import smoke

from jaxcerv.experiments import results, suites, tables


def test_normalised_scores_divide_by_the_best_row():
    recs = [{f"{k}_pooled": v for k, _ in results.METRICS} for v in (0.5, 0.8)]
    np.testing.assert_allclose(tables.normalised_scores(recs)[:, 0], [0.5 / 0.8, 1.0])


def test_caption_names_each_width_once_with_all_its_input_sizes():
    """Four whole-image families at their published sizes, one width: one sentence, not four."""
    rows = []
    for family in ("patchwise", "lenet", "alexnet", "vgg16", "inception"):
        config = smoke.get_config()
        config.model.family, config.model.input_size, config.model.width = family, 0, 1.0
        rows.append(results.Row(
            variant=suites.Variant(family, family), folds=[{}], ids=np.arange(4),
            labels=np.array([0, 1, 0, 1]), probs=np.full(4, 0.5), decisions=np.zeros(4),
            sessions=np.arange(4), weights=None, config=config.to_dict()))
    text = tables.caption("table1", rows, n_boot=10)
    assert text.count("Whole-image CNNs") == 1
    assert "input 32/224/227/299 px, channels x1 of the published net." in text

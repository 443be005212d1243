"""AnnoCerv: 5-fold grouped (by case) cross-validation on ../shared/data/annocerv-384 (see its
README), run from the repository root.

    jaxcerv train --config=annocerv --workdir=W
    jaxcerv data build --config=annocerv --data_dir=W/tfds      # the build summary alone

242 photographs after acetic acid of 80 cases, stored squashed to 384 x 384 from 3:2: the aspect is
restored (data.restore_aspect) and the photograph letterboxed into 12 x 12 patches of 28 px
(336 px: 12 x 8 patches of tissue), small enough for a CPU. Label 1 = the case's Swede score >= 5
(99 images, 30 of the 80 cases): **an expert's visual score, not histology**; a model trained on
it imitates the colposcopist, and results.json says so ("label_note"). The examiner's acetowhite
outlines are closed into regions at build time (jaxcerv.data.regions: 77 closed, 87 empty, 78
unclosable) and travel as records.truth_region / region_usable for explanation metrics.
"""

import ml_collections
from jaxcerv.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.real_photographs(default.get_config())  # balanced: 99 of 242 positive
    config.grid_size = 12
    config.patch_size = 28
    config.data.name = "annocerv"
    config.data.manual_dir = "../shared/data/annocerv-384"
    config.data.swede_threshold = 5
    config.data.restore_aspect = True
    # Case-bootstrap resamples of every interval and paired test (the real_heatmaps tables in
    # docs/real_data.md use these 1000).
    config.eval.bootstrap = 1000
    return config

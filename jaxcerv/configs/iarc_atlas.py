"""5-fold grouped (by case) cross-validation on the IARC colposcopy atlas subset in
../shared/data/iarc-colposcopy-atlas (VIA images only; see its README). The photographs are
800x600, so they are letterboxed into 24x24 patches of 28 px (672 px) rather than upsampled to the
paper's 1176 px. Few images (75) and cases (47): expect wide intervals."""

import ml_collections

from jaxcerv.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.grid_size = 24
    config.patch_size = 28
    config.data.name = "iarc_colposcopy_atlas"
    config.data.manual_dir = "../shared/data/iarc-colposcopy-atlas"
    config.data.resize = "pad"
    config.data.num_folds = 5
    config.data.val_fraction = 0.15
    config.data.augment = True
    config.train.batch_size = 8
    config.train.epochs = 40
    config.train.learning_rate = 3e-4
    config.train.patience = 8
    config.eval.batch_size = 8
    config.eval.num_heatmaps = 4
    return config

"""Seconds, for tests: a tiny grid, few images, two epochs."""

import ml_collections
from jaxcerv.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.grid_size = 4
    config.patch_size = 28
    config.data.num_images = 48
    config.model.weight_hidden = (32, 16, 8)
    config.model.classifier_hidden = (16, 8)
    config.train.batch_size = 8
    config.train.epochs = 2
    config.eval.batch_size = 8
    config.eval.num_heatmaps = 2
    config.eval.bootstrap = 20
    return config

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
    # The pre-recipe regulator and optimiser settings the tests' hand-computed oracles were
    # written for (and a 3-epoch lambda hold would leave a 2-epoch run without any regulator);
    # tests/configs/test_recipe.py checks the recipe itself.
    config.regulator.normalise = "weights"
    config.regulator.lam_hold_epochs = 0.0
    config.regulator.lam_ramp_epochs = 0.0
    config.train.learning_rate = 1e-3
    return config

"""The discriminating synthetic benchmark: cues at several scales, so methods can differ.

  python -m jaxcerv.main --config=configs/benchmark.py --workdir=runs/benchmark

The demo (configs/default.py) is saturated: fine texture decides every label and every method
reaches ROC AUC 1.0. Here CIN2+ lesions and the benign (CIN1-like) acetowhite areas of normal
images overlap in extent, density and margin sharpness (coarse cues, visible at low resolution),
only half of the lesions carry the mosaic / punctation texture (fine cue, full resolution only),
photos vary in light, focus and highlights, and a few labels are wrong. Calibrated so that the
paper's model reaches a test ROC AUC between 0.80 and 0.95 within 10 minutes of training on 2 CPU
cores (measured at 40 epochs: 0.916, 0.888 and 0.908 for seeds 0, 1 and 2; 4 min 47 s wall for
seed 0 end to end on an otherwise idle 2-core machine, data build and report included), while
scikit-learn oracles on the image at 8x8-32x32 px reach 0.58-0.60, on coarse statistics 0.70 and
on fine texture 0.91 (benchmarks/synthetic_difficulty.py). Those numbers are the paper's
regulator settings: its heatmaps were flat or inverted here. This config trains the
recommended recipe of configs/default.py (docs/recipe.md). docs/benchmark.md has the details.
"""

import ml_collections
from jaxcerv.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.data.num_images = 720
    config.data.test_fraction = 0.25
    syn = config.data.synthetic
    syn.lesion_scale = 1.05
    syn.benign_scale = 0.95
    syn.lesion_whiten = (0.45, 0.8)
    syn.benign_whiten = (0.35, 0.7)
    syn.lesion_rim = 0.2
    syn.benign_rim = 0.4
    syn.texture_amplitude = 0.8
    syn.textured_fraction = 0.5
    syn.illumination = 0.3
    syn.highlights = (3, 12)
    syn.blur = 0.6
    syn.label_noise = 0.03
    # The paper's model sits on a plateau for 20-35 epochs here (its patch weights saturate and
    # it learns as a mean-pooling model; seed 0 on 2 CPU cores left it at epoch 27-35 and was
    # selected at epoch 38: test ROC AUC 0.916). At 24 epochs the same run ended at 0.610.
    # New best validation AUCs on the plateau came at most 7 epochs apart: patience 12.
    config.train.epochs = 40
    config.train.patience = 12
    return config

"""The embedded default: the recommended recipe on our synthetic colposcopy data, sized for
`make demo` (train + evaluate in under 5 minutes on 2 CPU cores). Every other config imports
this one.

These defaults are the recommended recipe (docs/recipe.md), for the demo, the benchmark and
the real-photograph configs alike: a spatial loss on the weights' logits (the share of their
softmax outside the regulator, plus a small decay on the logits that holds their range), its
gradient into the weight MLP only, a weighted-mean aggregation, Adam at 3e-4, and the
parameters' moving average over the last epoch as the model that is tested and served.
configs/paper.py is the paper as printed."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    # Image = grid_size x grid_size patches of patch_size px (paper: 42 x 28 px = 1176 px).
    config.grid_size = 10
    config.patch_size = 28

    config.data = ml_collections.ConfigDict()
    config.data.name = "synthetic_cervix"  # | iarc_colposcopy_atlas | cervix_folder | annocerv
    config.data.data_dir = ""  # "" -> <workdir>/tfds
    config.data.manual_dir = ""
    config.data.csv = ""
    config.data.num_images = 400
    config.data.synthetic_seed = 0
    # Difficulty knobs of the synthetic generator (jaxcerv.data.synthetic.Knobs says what each
    # does). These values draw the demo: fine lesion texture is the only class signal.
    # configs/benchmark.py sets the discriminating benchmark.
    config.data.synthetic = ml_collections.ConfigDict()
    syn = config.data.synthetic
    syn.lesion_count_add = 0  # coarse cues: lesion (CIN2+) vs benign (normal) acetowhite areas
    syn.benign_count_add = 0
    syn.lesion_scale = 1.0
    syn.benign_scale = 1.0
    syn.lesion_whiten = (0.45, 0.75)
    syn.benign_whiten = (0.45, 0.75)
    syn.lesion_rim = 0.35
    syn.benign_rim = 0.35
    syn.texture_amplitude = 1.0  # fine cue: mosaic / punctation texture of the lesions
    syn.texture_scale = 1
    syn.textured_fraction = 1.0
    syn.cervix_radius = (0.25, 0.40)  # nuisance variation
    syn.cervix_aspect = (1.0, 1.35)
    syn.cervix_offset = 0.25
    syn.position_jitter = 0.03
    syn.rotation_jitter = 0.12
    syn.illumination = 0.0
    syn.highlights = (3, 9)
    syn.blur = 0.0
    syn.label_noise = 0.0
    config.data.resize = "stretch"  # | "pad" (keep aspect, letterbox)
    config.data.include_variants = False
    # annocerv (configs/annocerv.py): label = the case's Swede score >= this (5: refer or biopsy;
    # an expert's visual score, not histology), and place each photograph at its
    # original_width:original_height (the stored pixels were squashed to a square) before
    # config.data.resize; image and acetowhite mask take the same geometry.
    config.data.swede_threshold = 5
    config.data.restore_aspect = True
    config.data.val_fraction = 0.15
    config.data.test_fraction = 0.2
    config.data.num_folds = 0  # 0: one train/val/test split; k: grouped k-fold CV
    config.data.splits_file = ""
    # Keep the centre fraction of each side before a whole-image baseline resizes the image (the
    # paper's "Crop k" keeps k of 2400 px: 900 / 1200 / 1500 = 0.375 / 0.5 / 0.625).
    config.data.center_crop = 1.0
    config.data.augment = False  # training augmentation on/off; what it does: augmentation
    # jaxcerv.data.pipeline.Augment: these defaults are a horizontal flip and colour jitter only;
    # never a vertical flip. configs/iarc_atlas.py turns on the geometric and photometric terms.
    config.data.augmentation = ml_collections.ConfigDict()
    aug = config.data.augmentation
    aug.flip = True
    aug.colour = 0.1
    aug.rotation = 0.0  # degrees
    aug.scale = 0.0
    aug.translate = 0.0  # fraction of the side
    aug.white_balance = 0.0
    aug.illumination = 0.0
    aug.blur = 0.0  # max Gaussian sigma, px
    # Class-balanced epochs: half of each epoch's draws from each class (the rarer class repeated).
    config.data.balanced_sampling = False
    config.data.num_workers = 0
    # Keep the training split on the devices and gather each batch there
    # (jaxcerv/training/resident.py):
    # for a GPU, whose train step outruns the host pipeline at paper scale (949 against 139 img/s
    # on an H200). No augmentation; one process only.
    config.data.resident = False
    config.data.prefetch = 2

    config.model = ml_collections.ConfigDict()
    # "patchwise" (the paper) | "abmil" (gated-attention MIL on the same patch encoder) | the
    # whole-image baselines of Table 1: "lenet" | "alexnet" | "vgg16" | "inception" (no patch
    # weights: set regulator.mode="none").
    config.model.family = "patchwise"
    config.model.input_size = 0  # whole-image baselines: 0 = the published input side
    config.model.width = 1.0  # whole-image baselines: channel / unit multiplier (1 = published)
    config.model.freeze_blocks = 0  # vgg16: the lower n conv blocks never train (FZ1-FZ4)
    config.model.attention_hidden = 128  # abmil: units of the gated attention
    # A local .npz of {"encoder/Conv_0/kernel": array, ...} loaded over the fresh parameters
    # (jaxcerv.model.networks.load_init; names as its flatten_params writes them). "": none.
    config.model.init_from = ""
    config.model.conv_features = (12, 24, 48)
    config.model.weight_hidden = (800, 512, 128)
    config.model.classifier_hidden = (128, 32)
    # "weighted_mean" (the recipe: sum a_j g_j / sum a_j) | "mean" (the paper's default) | "sum" |
    # "concat"
    config.model.aggregation = "weighted_mean"
    config.model.dropout = 0.0
    config.model.feature_norm = True  # LayerNorm before the classifier (not in the paper)
    # Initial bias of the patch-weight logit: at -2 the sigmoid starts in its exponential regime,
    # where weights can differ by large factors, and the plateau before the classifier learns is
    # shorter (CPU, 10x10 grid, 300 images: val AUC 1.00 vs 0.70 after 6 epochs).
    config.model.weight_bias_init = -2.0
    config.model.dtype = "float32"  # | "bfloat16" (compute; params and loss stay float32)
    # The encoder and weight MLP run over checkpointed chunks of remat_chunk patches per image:
    # less memory, and on CPU faster (a chunk's activations stay in cache): 1.1-1.2x train, 1.5x
    # inference at paper scale, batch 4. On a GPU the whole batch at once is likely faster:
    # remat=False there.
    config.model.remat = True
    config.model.remat_chunk = 36
    config.model.conv_impl = "s2d"  # | "pool" | "xla" (plain nn.Conv): see jaxcerv/model/conv.py

    config.regulator = ml_collections.ConfigDict()
    config.regulator.mode = "iterative"  # | "fixed" (G0 for every image) | "none"
    config.regulator.lam = 0.01  # lambda of Eq. 11 (paper: 0.1, see configs/paper.py)
    # lambda warm-up (losses.lambda_at): 0 for the first lam_hold_epochs, then a linear ramp to
    # lam over lam_ramp_epochs, so the classifier learns before the regulator pulls.
    config.regulator.lam_hold_epochs = 0.0
    config.regulator.lam_ramp_epochs = 0.0
    # What each regulator is fitted to: "weights" (the paper), "normalised" or "above_median"
    # (see train.fit_weights).
    config.regulator.fit_on = "above_median"
    # "paper": Eq. 5-6, sum of 1 - norm(a) * norm(s), which pulls every patch inside the regulator
    # towards weight 1; "one_sided": sum of norm(a) * (1 - norm(s)), which only penalises weight
    # outside it, so the weights inside stay free to single out the lesions (but a flat map is
    # free too); "mass_outside": the share of weight mass outside it, times the patch count (with
    # normalise=logits read from the logits; no plateau on 4 of 5 benchmark seeds, but it lowers
    # every weight until the maps underflow to 0: docs/recipe.md); "softmax_outside" (the recipe):
    # the share of softmax(logits) outside it, times the patch count (shift-invariant in the
    # logits, so it never moves their shared level; normalise=logits only). On the benchmark,
    # seeds 0-4, it leaves the plateau 1-5 epochs sooner than Eq. 6 on the logits (docs/recipe.md).
    config.regulator.loss = "softmax_outside"  # configs/paper.py: "paper"
    # Add this times the sum of the squared weight logits to the spatial loss
    # (regulator.logit_decay_loss): it holds their range, which softmax_outside rewards without
    # end (seed 3 of the benchmark without it: weights inside the regulator saturated at 1.0, the
    # maps went flat and the classifier stayed at chance). 1e-3 holds it too, but ranked the
    # lesions worse on the benchmark (lesion AUC mean 0.86 against 0.90, docs/recipe.md).
    config.regulator.logit_decay = 5e-4  # configs/paper.py: 0
    # What the loss min-max normalises: "weights" (the paper's norm(a)) or "logits" (the weights
    # before their sigmoid). norm(a) is shift-invariant only before the sigmoid: on the weights,
    # Eq. 6 raises every weight through the MLP's shared bias until the sigmoid saturates at
    # exactly 1.0 in float32; the map is then flat, the loss at its maximum K with zero gradient,
    # and the heatmap stays flat for good (configs/benchmark.py, seed 0). On the logits the bias
    # gets no gradient from the loss and a flat map cannot arise from saturation.
    config.regulator.normalise = "logits"  # the recipe; configs/paper.py: "weights"
    # What the spatial loss's gradient reaches: "encoder" (the paper: the weight MLP and, through
    # it, the patch encoder) or "weight_mlp" (the encoder then learns from the classification
    # loss alone, and the regulator only shapes how the weight MLP reads its features). The
    # recipe: "weight_mlp" (docs/recipe.md: it lets the regulator pull from the first step
    # without holding the classifier on its plateau).
    config.regulator.reaches = "weight_mlp"
    # G0's standard deviation as a fraction of the image side (every patch size starts from the
    # same Gaussian); 0: the paper's G0, variance = half the grid in patch units.
    config.regulator.g0_fraction = 0.0
    # The regulator's kernel (regulator.KERNELS): "gaussian" (the paper), "flat_top" (generalised
    # Gaussian, shape exponent fitted) or "mixture" (two Gaussians, fitted by weighted EM).
    config.regulator.kernel = "gaussian"
    # Stopping criterion (regulator.stop_rule): an image's regulator stops refitting once
    # stop_epochs successive fits are each within stop_kl (KL divergence) of the one before;
    # it thaws when a fit moves by more than thaw_kl (0: never). stop_kl 0: off (the paper).
    config.regulator.stop_kl = 0.0
    config.regulator.stop_epochs = 3
    config.regulator.thaw_kl = 0.0

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 8  # global batch: must divide by the device count
    config.train.epochs = 10
    config.train.learning_rate = 3e-4  # the recipe; at 1e-3 the encoder can die (docs/recipe.md)
    # "constant" (the paper) | "warmup_cosine": linear warm-up from 0 over warmup_epochs, then a
    # cosine decay to final_lr_fraction of the peak at train.epochs (steps.learning_rate).
    config.train.schedule = "constant"
    config.train.warmup_epochs = 0.0
    config.train.final_lr_fraction = 0.0
    config.train.grad_clip = 0.0  # > 0: clip the global gradient norm to this before Adam
    config.train.adam_eps = 1e-8
    # > 0: validate, test and serve an exponential moving average of the parameters over about
    # this many epochs (steps.ema_decay), not the last step's; training itself is unchanged.
    # 0: the raw parameters (the paper). On the benchmark, seeds 0-4: docs/recipe.md.
    config.train.ema_epochs = 1.0  # the recipe; configs/paper.py: 0
    config.train.patience = 4  # early stopping: epochs without a better validation AUC
    config.train.log_every_steps = 10
    # "balanced": each class's BCE weighted by n / (2 n_class) of the training split (losses.py).
    config.train.class_weight = "none"
    # Divergence guard: a step whose loss, gradients, parameters or regulators are not finite, or
    # whose mean BCE exceeds this (a trained classifier's stays below ~10; a diverged one reached
    # 4e9 at learning rate 1e2), stops the run before anything is saved.
    config.train.max_bce = 1e3
    # With a pretrained encoder (model.init_from=<pretrain workdir>/encoder.npz): hold it still
    # for this many steps while the new weight MLP and classifier learn on its features.
    config.train.freeze_encoder_steps = 0
    # True: delete the workdir's earlier run (checkpoints, metrics, results) and start over. A
    # rerun without it resumes, and refuses a config that differs in more than the settings that
    # extend a run (jaxcerv.runtime.rundir.RERUN_MAY_CHANGE).
    config.train.restart = False

    # Self-supervised pretraining of the patch encoder (jaxcerv pretrain): contrastive
    # (NT-Xent) on pairs of views of random tissue patches of every photograph under images_dir.
    config.pretrain = ml_collections.ConfigDict()
    config.pretrain.images_dir = ""  # "" -> config.data.manual_dir
    # More folders of photographs for the pool (another data set's): with per_fold, a photograph
    # in any folder whose session is a fold's test session is held out of that fold as well.
    config.pretrain.extra_dirs = ()
    config.pretrain.epochs = 10
    config.pretrain.steps_per_epoch = 50
    config.pretrain.batch_patches = 256  # patches per step (two views each)
    config.pretrain.learning_rate = 1e-3
    config.pretrain.temperature = 0.2
    config.pretrain.projection = (128, 64)  # the head after the encoder (pretraining only)
    # One encoder per fold of the classifier's splits (W/fold_<k>/encoder.npz), each pretrained
    # without the photographs of that fold's test sessions (the folder of each session's
    # photographs is named <session> or case_<session>): a cross-validated estimate that never
    # saw its test images; train with model.init_from=W/fold_{fold}/encoder.npz and
    # data.splits_file=W/splits.json. False: one encoder from every photograph (transductive).
    config.pretrain.per_fold = False

    # The hand-crafted baseline (jaxcerv.experiments.handcrafted): scikit-learn's C, the inverse
    # L2 strength of its logistic regression (small: ~40 features, tens of training images).
    config.handcrafted = ml_collections.ConfigDict()
    config.handcrafted.c = 0.1

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 32
    # "youden" (on validation) | "balanced_accuracy" | "eer" | "fixed" (eval.threshold, needed
    # when there is no validation set: data.val_fraction=0)
    config.eval.threshold_criterion = "youden"
    config.eval.threshold = 0.5
    config.eval.num_heatmaps = 6
    config.eval.bootstrap = 200
    return config


def real_photographs(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The settings a set of a few hundred real photographs needs (the atlas and AnnoCerv
    configs): mild augmentation that keeps the colour cue (never a vertical flip), balanced
    class weights (else the model learns the prior), small batches, a lower learning rate and
    early stopping. Measured on the atlas: docs/experiments.md, "Small data sets"."""
    config.data.resize = "pad"
    config.data.num_folds = 5
    config.data.val_fraction = 0.15
    config.data.augment = True
    aug = config.data.augmentation
    aug.rotation = 10.0
    aug.scale = 0.1
    aug.translate = 0.05
    aug.white_balance = 0.05
    aug.illumination = 0.2
    aug.blur = 0.8
    config.train.class_weight = "balanced"
    config.train.batch_size = 8
    config.train.epochs = 20
    config.train.learning_rate = 3e-4
    config.train.patience = 6
    config.eval.batch_size = 8
    config.eval.num_heatmaps = 4
    return config

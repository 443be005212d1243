"""The paper's setting on one GPU:

    python -m jaxcerv.main --config=paper_gpu --workdir=runs/paper_gpu \
        --config.data.name=cervix_folder --config.data.manual_dir=DIR

`paper` with the compute path measured fastest on an H100 and an H200 (README, "On a GPU"):
both encoder layers that allow it in the space-to-depth form (`s2d2`), bfloat16 compute
(parameters, gradients and loss stay float32), the whole batch at once instead of checkpointed
patch chunks (remat costs 1.3x in training and is needed only for memory: 29 GB at batch 32),
and the training split kept on the GPU (the host pipeline feeds 146 img/s, the train step takes
about 1,900). `data.resident` refuses augmentation; `paper` has none."""

import ml_collections
from jaxcerv.configs import paper


def get_config() -> ml_collections.ConfigDict:
    config = paper.get_config()
    config.model.conv_impl = "s2d2"
    config.model.dtype = "bfloat16"
    config.model.remat = False
    config.data.resident = True
    return config

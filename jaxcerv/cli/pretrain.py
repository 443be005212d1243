"""``jaxcerv pretrain --config=NAME|FILE --workdir=DIR``: self-supervised pretraining of the patch
encoder (``training.pretrain``). Exit 2 for a usage problem, 1 for a run that stopped."""

from jaxcerv.cli import common

define = common.config_command("jaxcerv.training.pretrain", "pretrain", "runs/pretrain",
                               "Where the encoder and logs go.")

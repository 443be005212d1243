"""``jaxcerv handcrafted --config=NAME|FILE --workdir=DIR``: the hand-crafted colour and texture
baseline (``experiments.handcrafted``) on the config's folds, in the run layout a report and the
experiments runner read. Exit 2 for a usage problem, 1 for a run that stopped."""

from jaxcerv.cli import common

define = common.config_command("jaxcerv.experiments.handcrafted", "run_baseline",
                               "runs/handcrafted", "The run folder.")

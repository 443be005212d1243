"""Command line: `python -m jaxcerv.main --config=configs/default.py --workdir=DIR` (the same as
`jaxcerv train`; --config also takes a built-in name: default, paper, smoke, iarc_atlas).

Rerunning the same command resumes from the workdir's latest checkpoint. Multi-host: pass
--coordinator/--num_processes/--process_id, or let JAX auto-detect a TPU pod or SLURM job.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxcerv import configs, parallel, train

_CONFIG = config_flags.DEFINE_config_file(
    "config", configs.resolve("default"), "Config: a built-in name or a file."
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Where checkpoints, logs and results go.")
_COORDINATOR = flags.DEFINE_string("coordinator", "", "host:port of process 0 (multi-process).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Number of processes (multi-process).")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index (multi-process).")


def main(argv: list[str]) -> None:
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if (problem := parallel.accelerator_problem()) is not None:
        sys.exit(f"error: {problem}")
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *configs.resolve_args(sys.argv[1:])]  # config_flags reads sys.argv
    app.run(main)

"""Command line: `python -m jaxcerv.main --config=configs/default.py --workdir=DIR` (the same as
`jaxcerv train`; --config also takes a built-in name: default, paper, smoke, iarc_atlas, benchmark).

Rerunning the same command resumes from the workdir's latest checkpoint. Multi-host: pass
--coordinator/--num_processes/--process_id, or let JAX auto-detect a TPU pod or SLURM job.
The only module that runs both training and the report. Every expected failure (a bad setting,
a busy workdir, divergence, a failed or corrupt checkpoint, a full disk) ends with one line on
stderr: exit status 2 for a usage problem (nothing written), 1 for a run that stopped.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxcerv import configs
from jaxcerv.training import configcheck

_CONFIG = config_flags.DEFINE_config_file(
    "config", configs.resolve("default"), "Config: a built-in name or a file."
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Where checkpoints, logs and results go.")
_COORDINATOR = flags.DEFINE_string("coordinator", "", "host:port of process 0 (multi-process).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Number of processes (multi-process).")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index (multi-process).")


def _fail(message: str, status: int) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with a config override that names an unknown key or a bad value
    reported in one line (exit 2) instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:  # ml_collections: override of a key that is absent
        config = _load_config(argv)
        unknown = [a for a in argv[1:] if a.startswith("--config.") and config is not None
                   and not configcheck.has_key(config, _override_key(a))]
        if unknown:
            _fail(configcheck.unknown_key_message(_override_key(unknown[0]), config), 2)
        _fail(f"bad --config override: {e}", 2)
    except flags.Error as e:
        _fail(str(e), 2)
    raise AssertionError("unreachable")


def _override_key(arg: str) -> str:
    return arg.split("=", 1)[0][len("--config."):]


def _load_config(argv: list[str]):
    """The config file's ``get_config()``, loaded as config_flags does, or None."""
    import importlib.util

    path = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")),
                configs.resolve("default"))
    try:
        spec = importlib.util.spec_from_file_location("_jaxcerv_config", path.split(":")[0])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config()
    except Exception:  # the config file itself is the problem: absl reports that
        return None


def main(argv: list[str]) -> None:
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    config = _CONFIG.value
    try:
        configcheck.check_config(config)
    except configcheck.ConfigError as e:
        _fail(str(e), 2)

    # Heavy imports after the checks, so a usage error answers at once.
    from jaxcerv.reporting import report
    from jaxcerv.runtime import parallel, progress
    from jaxcerv.runtime.rundir import RunError
    from jaxcerv.training import train

    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if (problem := parallel.accelerator_problem()) is not None:
        _fail(problem, 1)
    try:
        train.train_and_evaluate(config, _WORKDIR.value)
    except ValueError as e:  # settings that only the data or the devices can refute
        _fail(" ".join(str(e).split()), 2 if "config." in str(e) else 1)
    except RunError as e:
        _fail(str(e), 1)
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        _fail(f"{e.strerror or e}{where}: free disk space or fix the folder, then rerun the "
              "same command to resume", 1)
    if parallel.is_writer():
        with progress.announce("writing the report"):
            path = report.write_report(_WORKDIR.value)
        print("report:", path, flush=True)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *configs.resolve_args(sys.argv[1:])]  # config_flags reads sys.argv
    app.run(main, flags_parser=parse_flags)

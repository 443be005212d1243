"""``jaxcerv train --config=NAME|FILE --workdir=DIR`` (also ``python -m jaxcerv.main``).

Rerunning the same command resumes from the workdir's latest checkpoint. Multi-host: pass
--coordinator/--num_processes/--process_id, or let JAX auto-detect a TPU pod or SLURM job.
The only command that runs both training and the report. Every expected failure (a bad setting,
a busy workdir, divergence, a failed or corrupt checkpoint, a full disk) ends with one line on
stderr: exit status 2 for a usage problem (nothing written), 1 for a run that stopped, 130 for
Ctrl-C (``interrupted at epoch N``; the rerun resumes).
"""

from __future__ import annotations

from collections.abc import Callable

from absl import flags

from jaxcerv.cli import common


def define() -> Callable[[list[str]], None]:
    config = common.define_config()
    workdir = flags.DEFINE_string("workdir", "runs/default",
                                  "Where checkpoints, logs and results go.")
    coordinator = flags.DEFINE_string("coordinator", "",
                                      "host:port of process 0 (multi-process).")
    num_processes = flags.DEFINE_integer("num_processes", 0,
                                         "Number of processes (multi-process).")
    process_id = flags.DEFINE_integer("process_id", -1, "This process's index (multi-process).")

    def main(argv: list[str]) -> None:
        common.no_arguments(argv)
        train(config.value, workdir.value, coordinator.value, num_processes.value,
              process_id.value)

    return main


def train(config, workdir: str, coordinator: str = "", num_processes: int = 0,
          process_id: int = -1) -> None:
    """Check, train and test, then write the report; expected failures are one line."""
    from jaxcerv.training import configcheck
    try:
        configcheck.check_config(config)
    except configcheck.ConfigError as e:
        common.fail(str(e), common.USAGE)

    # Heavy imports after the checks, so a usage error answers at once.
    from jaxcerv.reporting import report
    from jaxcerv.runtime import parallel, progress
    from jaxcerv.runtime.rundir import RunError
    from jaxcerv.training import train as train_lib

    parallel.initialize_distributed(coordinator, num_processes, process_id)
    if (problem := parallel.accelerator_problem()) is not None:
        common.fail(problem, common.STOPPED)
    try:
        train_lib.train_and_evaluate(config, workdir)
    except train_lib.Interrupted as e:
        common.fail(f"interrupted at {e.where}, rerun the same command to resume",
                    common.INTERRUPTED, prefix="")
    except ValueError as e:  # settings that only the data or the devices can refute
        common.fail(" ".join(str(e).split()), common.USAGE if "config." in str(e)
                    else common.STOPPED)
    except RunError as e:
        common.fail(str(e), common.STOPPED)
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        common.fail(f"{e.strerror or e}{where}: free disk space or fix the folder, then rerun "
                    "the same command to resume", common.STOPPED)
    if parallel.is_writer():
        with progress.announce("writing the report"):
            path = report.write_report(workdir)
        print("report:", path, flush=True)

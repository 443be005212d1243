"""What every subcommand shares: the ``--config`` flag, the flag parser that answers a bad
``--config.`` override in one line, and the one-line ``error:`` exit."""

from __future__ import annotations

import signal
import sys
from typing import NoReturn

from absl import flags

from jaxcerv import configs

# Exit statuses (README, "exit status"): 2 a usage problem (nothing done), 1 a run that stopped,
# 130 interrupted (Ctrl-C; rerun the same command to resume).
USAGE, STOPPED, INTERRUPTED = 2, 1, 130
HELP = {"--help", "-h", "-?", "--helpfull", "--helpshort", "--helpxml"}


def fail(message: str, status: int, prefix: str = "error: ") -> NoReturn:
    """One line on stderr and the exit status."""
    print(f"{prefix}{message}", file=sys.stderr, flush=True)
    sys.exit(status)


def define_config(help_text: str = "Config: a built-in name or a file."):
    """The ``--config`` flag (``--config=NAME`` or ``--config=PATH``, ``--config.a.b=value``)."""
    from ml_collections import config_flags

    try:  # without --config, config_flags applies the overrides to the default right here
        return config_flags.DEFINE_config_file("config", configs.resolve("default"), help_text)
    except (AttributeError, KeyError) as e:
        bad_override(sys.argv, e)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with a config override that names an unknown key or a bad value
    reported in one line (exit 2) instead of a traceback, and ``--help`` exit 0."""
    try:
        return flags.FLAGS(argv)
    except SystemExit:  # absl's --help / --helpfull print the flags and exit 1
        if HELP & set(argv[1:]):
            sys.exit(0)
        raise
    except (AttributeError, KeyError) as e:  # ml_collections: override of a key that is absent
        bad_override(argv, e)
    except flags.Error as e:
        fail(str(e), USAGE)


def bad_override(argv: list[str], e: Exception) -> NoReturn:
    """A ``--config.a.b`` override that ml_collections refused: name the key, exit 2."""
    from jaxcerv.training import configcheck

    config = _load_config(argv)
    unknown = [a for a in argv[1:] if a.startswith("--config.") and config is not None
               and not configcheck.has_key(config, _override_key(a))]
    if unknown:
        fail(configcheck.unknown_key_message(_override_key(unknown[0]), config), USAGE)
    fail(f"bad --config override: {e}", USAGE)


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


def quiet_logs() -> None:
    """WARNING unless --verbosity was given: orbax and TFDS log every step at INFO."""
    from absl import logging

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def ctrl_c_always_interrupts() -> None:
    """Ctrl-C raises KeyboardInterrupt wherever it lands. ``asyncio.run`` (orbax's checkpoint
    I/O) swaps Python's default SIGINT handler for one that only cancels its task, and a task
    that finishes anyway drops the Ctrl-C: the run went on and exited 0. asyncio leaves any
    handler other than the default alone."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)


def no_arguments(argv: list[str]) -> None:
    """A command that takes flags only: stray words are a usage error."""
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}", USAGE)


def run_on_config(run, config, workdir: str) -> None:
    """``run(config, workdir)`` after the config check: a bad setting is one line, exit 2; a run
    that stops (its folder, its data, the disk) one line, exit 1."""
    from jaxcerv.runtime.rundir import RunError
    from jaxcerv.training import configcheck
    try:
        configcheck.check_config(config)
        run(config, workdir)
    except configcheck.ConfigError as e:
        fail(" ".join(str(e).split()), USAGE)
    except (ValueError, RunError, OSError) as e:
        fail(" ".join(str(e).split()), STOPPED)


def config_command(module: str, function: str, workdir: str, workdir_help: str):
    """The ``define`` of a command that is ``--config`` and ``--workdir`` and one library call
    ``module.function(config, workdir)`` (``run_on_config``)."""

    def define():
        config = define_config()
        folder = flags.DEFINE_string("workdir", workdir, workdir_help)

        def main(argv: list[str]) -> None:
            import importlib

            no_arguments(argv)
            run = getattr(importlib.import_module(module), function)
            run_on_config(run, config.value, folder.value)

        return main

    return define

"""``jaxcerv experiments --suite=NAME --config=NAME|FILE --workdir=DIR [--variants=a,b]``: run an
experiment suite (``experiments.suites``) into its tables, figures and index page.

Expected failures end with one ``error:`` line: exit 2 for a usage problem, else 1.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import ml_collections

from jaxcerv.cli import common
from jaxcerv.experiments.suites import SUITES


def define() -> Callable[[list[str]], None]:
    """Define the command's absl flags and return its ``main``."""
    from absl import flags

    suite_flag = flags.DEFINE_enum("suite", "table1", list(SUITES),
                                   "Which experiment suite to run.")
    config_flag = common.define_config("Base config: a built-in name or a file.")
    workdir_flag = flags.DEFINE_string("workdir", "runs/experiments",
                                       "Suite folder: W/<variant>/..., W/<suite>.md, ...")
    only_flag = flags.DEFINE_list("variants", [], "Only these variants (and the proposed model).")

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            common.fail(f"unexpected arguments: {' '.join(argv[1:])}", 2)
        run(suite_flag.value, config_flag.value, workdir_flag.value, only_flag.value)

    return main


def run(suite: str, config: ml_collections.ConfigDict, workdir: str,
        only: Sequence[str] = ()) -> dict[str, str]:
    """The command: ``runner.run`` with its expected failures as one ``error:`` line."""
    from jaxcerv.experiments import runner
    from jaxcerv.runtime.rundir import RunError
    from jaxcerv.training import configcheck
    try:
        out = runner.run(suite, config, workdir, only)
    except configcheck.ConfigError as e:
        common.fail(str(e), 2)
    except (ValueError, RunError) as e:
        message = " ".join(str(e).split())
        common.fail(message, 2 if "config." in message or "--" in message else 1)
    with open(out["md"]) as f:
        print(f.read())
    print("index:", out["index"], flush=True)
    sys.stdout.flush()
    return out

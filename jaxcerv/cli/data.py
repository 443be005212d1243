"""``jaxcerv data build [NAME] --config=NAME|FILE --data_dir=DIR [--config.a.b=value ...]`` (also
``python -m jaxcerv.data build ...``): build a config's dataset, or reuse an existing build, and
print its summary: images per label and grade, sessions, conversions and every skipped file with
its reason.

The dataset is the one ``jaxcerv train`` would build from the same config (``pipeline
.dataset_builder``). ``NAME`` and the flags ``--manual_dir``, ``--csv``, ``--grid_size``,
``--patch_size``, ``--resize``, ``--include_variants``, ``--num_images``, ``--synthetic_seed``,
``--swede_threshold``, ``--restore_aspect`` are short for the config fields they name. A fatal
problem is one line on stderr naming the file and problem, exit 1 (``--traceback`` shows the
trace); a usage problem exit 2.

The command parses its own flags into a private ``FlagValues``, so ``main`` can be called again
in one process (the builder tests do).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from jaxcerv import configs
from jaxcerv.cli import common

USAGE = "usage: jaxcerv data build [NAME] --config=NAME|FILE --data_dir=DIR [--config.a.b=value]"
# Short flag -> the config field it sets.
SHORT = {
    "manual_dir": "data.manual_dir",
    "csv": "data.csv",
    "grid_size": "grid_size",
    "patch_size": "patch_size",
    "resize": "data.resize",
    "include_variants": "data.include_variants",
    "num_images": "data.num_images",
    "synthetic_seed": "data.synthetic_seed",
    "swede_threshold": "data.swede_threshold",
    "restore_aspect": "data.restore_aspect",
}


def parse_flags(argv: list[str]) -> list[str]:
    """``main`` parses its own flags: absl's global ones only get marked as parsed."""
    flags.FLAGS(argv[:1])
    return argv


def _define(fv: flags.FlagValues, argv: Sequence[str]) -> None:
    config_flags.DEFINE_config_file("config", configs.resolve("default"),
                                    "Config: a built-in name or a file.", flag_values=fv,
                                    sys_argv=list(argv))
    flags.DEFINE_string("data_dir", None,
                        "Where the dataset is written (default: --config.data.data_dir).",
                        flag_values=fv)
    flags.DEFINE_bool("traceback", False, "Show the full trace on errors.", flag_values=fv)
    flags.DEFINE_bool("help", False, "Show this help.", flag_values=fv)
    for name in ("manual_dir", "csv", "resize"):
        flags.DEFINE_string(name, None, f"Short for --config.{SHORT[name]}.", flag_values=fv)
    for name in ("grid_size", "patch_size", "num_images", "synthetic_seed", "swede_threshold"):
        flags.DEFINE_integer(name, None, f"Short for --config.{SHORT[name]}.", flag_values=fv)
    for name in ("include_variants", "restore_aspect"):
        flags.DEFINE_bool(name, None, f"Short for --config.{SHORT[name]}.", flag_values=fv)


def main(argv: Sequence[str]) -> int:
    """``argv[0]`` is the program name; returns the exit status."""
    argv = [argv[0], *configs.resolve_args(list(argv[1:]))]
    fv = flags.FlagValues()
    _define(fv, argv)
    try:
        words = fv(argv)[1:]
    except (flags.Error, AttributeError, KeyError) as e:
        print(f"error: {e}\n{USAGE}", file=sys.stderr, flush=True)
        return common.USAGE
    if fv["help"].value:
        print(f"{__doc__}\n{USAGE}\n\n{fv.get_help()}")
        return 0
    if not words or words[0] != "build" or len(words) > 2:
        print(f"error: {USAGE}", file=sys.stderr, flush=True)
        return common.USAGE
    config = fv["config"].value
    if len(words) == 2:
        config.data.name = words[1]
    for name, field in SHORT.items():
        if fv[name].value is not None:
            section, _, key = field.rpartition(".")
            (config[section] if section else config)[key] = fv[name].value
    target = fv["data_dir"].value or config.data.data_dir
    if not target:
        print(f"error: pass --data_dir (or --config.data.data_dir)\n{USAGE}", file=sys.stderr)
        return common.USAGE
    config.data.data_dir = target
    return build(config, traceback=fv["traceback"].value)


def build(config, *, traceback: bool = False) -> int:
    """Build (or reuse) ``config``'s dataset in ``config.data.data_dir``, print the summary."""
    from jaxcerv.data import builders, pipeline
    announced: list[str] = []  # a fresh build announces itself and its summary

    def announce(line: str) -> None:
        announced.append(line)
        print(line, flush=True)

    try:
        builder = pipeline.dataset_builder(config, config.data.data_dir)
        summary = builders.prepare(builder, config.data.manual_dir, announce=announce)
    except Exception as e:  # one line naming the file and problem, unless --traceback
        if traceback:
            raise
        message = str(e).splitlines()[0] if str(e) else ""
        print(f"error: {type(e).__name__}: {message}", file=sys.stderr, flush=True)
        return common.STOPPED
    if not announced:
        print(builders.format_summary(summary))
    return 0

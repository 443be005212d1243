"""The `jaxcerv` command: `jaxcerv SUBCOMMAND [--flag=value ...]`, one flag style for all.

Every subcommand parses absl flags; those that take a config accept ``--config=NAME`` (a
built-in: ``configs/NAME.py``) or ``--config=PATH``, and override any field with
``--config.a.b=value``. ``jaxcerv SUBCOMMAND --help`` lists that subcommand's own flags;
``--helpfull`` adds every library's. Works from any folder: the configs ship in the package.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags

from jaxcerv import configs
from jaxcerv.cli import common

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Command:
    summary: str
    usage: str
    define: Callable[[], Callable[[list[str]], int | None]]  # defines flags, returns main


def _own_flags(module: str, prog: str) -> None:
    """Make ``module``'s flags the key flags of ``prog`` so that ``--help`` shows them."""
    for flag in FLAGS.get_key_flags_for_module(module):
        FLAGS.register_key_flag_for_module(prog, flag)


def _module(name: str) -> Callable[[], Callable[[list[str]], Any]]:
    """The subcommand in ``jaxcerv.cli.<name>``: its ``define()`` defines the flags and returns
    its main; a module without ``define`` parses its own (``main``, ``parse_flags``)."""

    def define() -> Callable[[list[str]], Any]:
        module = importlib.import_module(f"jaxcerv.cli.{name}")
        return module.define() if hasattr(module, "define") else module.main

    return define


COMMANDS: dict[str, Command] = {
    "train": Command(
        "train and evaluate; rerun to resume",
        "jaxcerv train --config=NAME|FILE --workdir=DIR [--config.a.b=value ...]",
        _module("train"),
    ),
    "pretrain": Command(
        "self-supervised pretraining of the patch encoder on a folder of photographs",
        "jaxcerv pretrain --config=NAME|FILE --workdir=DIR [--config.pretrain.images_dir=DIR]",
        _module("pretrain"),
    ),
    "predict": Command(
        "score image files: probability, label, heatmap",
        "jaxcerv predict (--workdir=DIR | --checkpoint=STEP_DIR | --model=FILE) [--save_weights] "
        "IMAGE...",
        _module("predict"),
    ),
    "report": Command(
        "write the HTML report of a finished run",
        "jaxcerv report --workdir=DIR [--out=DIR] [--compare=W2,W3] [--gallery=8]",
        _module("report"),
    ),
    "data": Command(
        "build a config's dataset and print its summary",
        "jaxcerv data build [NAME] --config=NAME|FILE --data_dir=DIR [--manual_dir=DIR]",
        _module("data"),
    ),
    "export": Command(
        "serialise the inference function (jax.export) with a JSON sidecar",
        "jaxcerv export --workdir=DIR --out=model.jaxexport",
        _module("export"),
    ),
    "bench": Command(
        "time the train step and inference",
        "jaxcerv bench --config=NAME|FILE",
        _module("bench"),
    ),
    "handcrafted": Command(
        "the hand-crafted colour/texture + logistic regression baseline on the config's folds",
        "jaxcerv handcrafted --config=NAME|FILE --workdir=DIR",
        _module("handcrafted"),
    ),
    "serve": Command(
        "a local web page: drop photographs, see probability, decision and heatmap",
        "jaxcerv serve (--model=FILE | --workdir=DIR) [--host=127.0.0.1] [--port=8000]",
        _module("serve"),
    ),
    "experiments": Command(
        "run an experiment suite (Tables 1-2, regulator, small data) into tables + figures",
        "jaxcerv experiments --suite=table1|table2|regulator|small_data|real_heatmaps "
        "--config=NAME|FILE --workdir=DIR [--variants=a,b]",
        _module("experiments"),
    ),
}


def _overview() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {c.summary}" for name, c in COMMANDS.items()]
    return (
        "usage: jaxcerv SUBCOMMAND [--flag=value ...]   (jaxcerv SUBCOMMAND --help for its flags)\n"
        + "\n".join(lines)
        + f"\nbuilt-in configs: {', '.join(configs.builtin_names())}\n"
    )


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        sys.stdout.write(_overview())
        sys.exit(0 if len(argv) >= 2 else 2)
    name = argv[1]
    if name not in COMMANDS:
        sys.stderr.write(f"jaxcerv: unknown subcommand {name!r}\n" + _overview())
        sys.exit(2)
    command = COMMANDS[name]
    prog = f"jaxcerv {name}"
    # config_flags reads sys.argv for --config.a.b overrides, and absl's --help names the program
    # and shows the key flags of the module called sys.argv[0].
    sys.argv = [prog, *configs.resolve_args(argv[2:])]
    sys.modules["__main__"].__doc__ = f"{command.summary}\n\nusage: {command.usage}\n"
    run = command.define()
    for module in (run.__module__, common.__name__, __name__):
        _own_flags(module, prog)
    # A bad flag or --config override is one line, exit 2; a module may parse its own flags.
    parser = getattr(sys.modules[run.__module__], "parse_flags", common.parse_flags)

    def run_quietly(args: list[str]) -> int | None:
        common.quiet_logs()
        common.ctrl_c_always_interrupts()
        return run(args)

    app.run(run_quietly, argv=sys.argv, flags_parser=parser)


if __name__ == "__main__":
    main()

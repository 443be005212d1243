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
from ml_collections import config_flags

from jaxcerv import configs

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


def _quiet_logs() -> None:
    """WARNING unless --verbosity was given: orbax and TFDS log every step at INFO."""
    from absl import logging

    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


# --------------------------------------------------------------------------------- subcommands


def _define_train() -> Callable[[list[str]], None]:
    from jaxcerv import main as train_main
    return train_main.main


def _define_pretrain() -> Callable[[list[str]], None]:
    from jaxcerv import main as train_main  # noqa: F401  (defines --config and --workdir)
    from jaxcerv.training import pretrain
    return pretrain.main


def _define_predict() -> Callable[[list[str]], int]:
    workdir = flags.DEFINE_string("workdir", None, "Run folder: best checkpoint, threshold.")
    checkpoint = flags.DEFINE_string(
        "checkpoint", None, "An orbax step directory, e.g. W/checkpoints/latest/7."
    )
    model = flags.DEFINE_string(
        "model", None, "An exported model (jaxcerv export): runs with jax and numpy only."
    )
    out = flags.DEFINE_string("out", None, "Folder for the heatmap PNGs.")
    cmap = flags.DEFINE_string("cmap", "jet", "Matplotlib colour map of the heatmap.")
    alpha = flags.DEFINE_float("alpha", 0.45, "Heatmap opacity in [0, 1].")

    def main(argv: list[str]) -> int:
        import json

        images = argv[1:]
        sources = [workdir.value, checkpoint.value, model.value]
        if not images or sum(s is not None for s in sources) == 0:
            raise app.UsageError("pass --workdir, --checkpoint or --model, then IMAGE...")
        if model.value is not None and (workdir.value or checkpoint.value):
            raise app.UsageError("--model serves an exported file: drop --workdir/--checkpoint")
        options = dict(cmap=cmap.value, alpha=alpha.value)
        try:
            if model.value is not None:
                from jaxcerv.inference import served
                results = served.predict_files(model.value, images, out.value, **options)
            else:
                from jaxcerv.inference import predict
                results = predict.predict_files(
                    workdir.value, images, out.value, checkpoint=checkpoint.value, **options
                )
        except (OSError, RuntimeError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for r in results:
            print(json.dumps(r), flush=True)
        return 1 if all("error" in r for r in results) else 0

    return main


def _define_report() -> Callable[[list[str]], int]:
    workdir = flags.DEFINE_string("workdir", None, "The run folder.", required=True)
    compare = flags.DEFINE_list("compare", [], "Other finished runs drawn on the ROC plot.")
    gallery = flags.DEFINE_integer("gallery", 8, "Number of test images in the gallery.")
    evolution = flags.DEFINE_integer("evolution_images", 3, "Images in the regulator evolution.")
    epochs = flags.DEFINE_list("epochs", None, "Regulator-evolution epochs (default 1,32,48).")
    normalisation = flags.DEFINE_enum(
        "normalisation", "minmax", ["minmax", "percentile"], "Heatmap colour scaling."
    )
    percentiles = flags.DEFINE_list("percentiles", ["2", "98"], "LO,HI for percentile scaling.")
    cmap = flags.DEFINE_string("cmap", "jet", "Matplotlib colour map of the heatmaps.")
    alpha = flags.DEFINE_float("alpha", 0.45, "Heatmap opacity in [0, 1].")
    smooth = flags.DEFINE_float("smooth", 0.0, "Heatmap blur sigma, in patches.")

    def main(argv: list[str]) -> int:
        import os

        from jaxcerv.reporting import report
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        lo, hi = (float(p) for p in percentiles.value)
        try:
            baselines = {
                os.path.basename(os.path.abspath(w)): report.load_test_curve(w)
                for w in compare.value
            }
            path = report.write_report(
                workdir.value,
                roc_baselines=baselines,
                style=report.HeatmapStyle(
                    normalisation.value, (lo, hi), cmap.value, alpha.value, smooth.value
                ),
                epochs=[int(e) for e in epochs.value] if epochs.value else None,
                num_gallery=gallery.value,
                num_evolution=evolution.value,
            )
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(path)
        return 0

    return main


def _define_data() -> Callable[[list[str]], int]:
    config = config_flags.DEFINE_config_file(
        "config", configs.resolve("default"), "Config: a built-in name or a file."
    )
    data_dir = flags.DEFINE_string(
        "data_dir", None, "Where the dataset is written (default: --config.data.data_dir)."
    )
    traceback = flags.DEFINE_bool("traceback", False, "Show the full trace on errors.")

    def main(argv: list[str]) -> int:
        from jaxcerv.data import builders, pipeline

        if argv[1:] != ["build"]:
            raise app.UsageError("usage: jaxcerv data build --config=NAME|FILE --data_dir=DIR")
        c = config.value.copy_and_resolve_references()
        target = data_dir.value or c.data.data_dir
        if not target:
            raise app.UsageError("pass --data_dir (or --config.data.data_dir)")
        c.data.data_dir = target
        try:
            # the builder training opens: every data setting (synthetic knobs, annocerv's)
            builder = pipeline.dataset_builder(c, target)
            announced: list[str] = []  # a fresh build announces itself and its summary

            def announce(line: str) -> None:
                announced.append(line)
                print(line, flush=True)

            summary = builders.prepare(builder, c.data.manual_dir, announce=announce)
        except Exception as e:  # one line naming the file and problem, unless --traceback
            if traceback.value:
                raise
            print(f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                  file=sys.stderr)
            return 1
        if not announced:
            print(builders.format_summary(summary))
        return 0

    return main


def _define_export() -> Callable[[list[str]], int]:
    workdir = flags.DEFINE_string("workdir", None, "Run folder: its best checkpoint is exported.")
    checkpoint = flags.DEFINE_string("checkpoint", None, "Or one orbax step directory.")
    out = flags.DEFINE_string("out", None, "File to write, e.g. model.jaxexport.", required=True)

    def main(argv: list[str]) -> int:
        from jaxcerv.inference import export
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        if workdir.value is None and checkpoint.value is None:
            raise app.UsageError("pass --workdir or --checkpoint")
        try:
            meta = export.export_run(workdir.value, out.value, checkpoint.value)
        except (OSError, RuntimeError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {out.value} and {out.value}.json (image {meta['image_size']} px, "
              f"threshold {meta['threshold']:.3f}, data set {meta['dataset']})")
        return 0

    return main


def _define_experiments() -> Callable[[list[str]], None]:
    from jaxcerv.experiments import suites as experiments
    return experiments.define_flags()


def _delegate(module: str, what: str) -> Callable[[], Callable[[list[str]], Any]]:
    """A subcommand served by ``module``, which defines its flags on import and has ``main(argv)``.
    Until that module exists the subcommand says so and exits 2."""

    def define() -> Callable[[list[str]], Any]:
        try:
            return importlib.import_module(module).main
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            print(f"jaxcerv: {what} is not in this version ({module} does not exist yet)",
                  file=sys.stderr)
            sys.exit(2)

    return define


COMMANDS: dict[str, Command] = {
    "train": Command(
        "train and evaluate; rerun to resume",
        "jaxcerv train --config=NAME|FILE --workdir=DIR [--config.a.b=value ...]",
        _define_train,
    ),
    "pretrain": Command(
        "self-supervised pretraining of the patch encoder on a folder of photographs",
        "jaxcerv pretrain --config=NAME|FILE --workdir=DIR [--config.pretrain.images_dir=DIR]",
        _define_pretrain,
    ),
    "predict": Command(
        "score image files: probability, label, heatmap",
        "jaxcerv predict (--workdir=DIR | --checkpoint=STEP_DIR | --model=FILE) IMAGE...",
        _define_predict,
    ),
    "report": Command(
        "write the HTML report of a finished run",
        "jaxcerv report --workdir=DIR [--compare=W2,W3] [--gallery=8]",
        _define_report,
    ),
    "data": Command(
        "build a config's dataset and print its summary",
        "jaxcerv data build --config=NAME|FILE --data_dir=DIR [--config.data.manual_dir=DIR]",
        _define_data,
    ),
    "export": Command(
        "serialise the inference function (jax.export) with a JSON sidecar",
        "jaxcerv export --workdir=DIR --out=model.jaxexport",
        _define_export,
    ),
    "bench": Command(
        "time the train step and inference",
        "jaxcerv bench --config=NAME|FILE",
        _delegate("jaxcerv.cli.bench", "bench"),
    ),
    "experiments": Command(
        "run an experiment suite (Tables 1-2, regulator, small data) into tables + figures",
        "jaxcerv experiments --suite=table1|table2|regulator|small_data --config=NAME|FILE "
        "--workdir=DIR [--variants=a,b]",
        _define_experiments,
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
    _own_flags(run.__module__, prog)
    _own_flags(__name__, prog)
    # A module may bring its own flag parser (main.parse_flags: a bad override in one line).
    parser = getattr(sys.modules[run.__module__], "parse_flags", app.parse_flags_with_usage)

    def run_quietly(args: list[str]) -> int | None:
        _quiet_logs()
        return run(args)

    app.run(run_quietly, argv=sys.argv, flags_parser=parser)


if __name__ == "__main__":
    main()

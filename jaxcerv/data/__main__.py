"""`python -m jaxcerv.data build NAME --manual_dir DIR --data_dir DIR [--config FILE] [--csv FILE]`

Builds a dataset (or reuses an existing build) and prints its summary: images per label and per
grade, sessions, conversions and every skipped file with its reason. Resolution and options come
from --config (a config file with `get_config()`, e.g. configs/paper.py) and can be overridden by
flags; without --config the paper's resolution (42 x 28 px patches) is used. Fatal problems exit
with status 1 and one line on stderr (--traceback shows the full trace).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any

from jaxcerv.data import builders
from jaxcerv.data.images import RESIZE_POLICIES

_DEFAULTS = {
    "grid_size": 42,
    "patch_size": 28,
    "resize": "stretch",
    "include_variants": False,
    "num_images": 560,
    "synthetic_seed": 0,
    "swede_threshold": 5,
    "restore_aspect": True,
}


def _config_values(path: str) -> dict[str, Any]:
    """The data-relevant fields of a config file (ml_collections `get_config()`)."""
    spec = importlib.util.spec_from_file_location("_jaxcerv_build_config", path)
    if spec is None or spec.loader is None or not Path(path).is_file():
        raise builders.DatasetError(f"config file not found: {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    data = config.data
    return {
        "grid_size": config.grid_size,
        "patch_size": config.patch_size,
        "resize": data.resize,
        "include_variants": data.include_variants,
        "num_images": data.num_images,
        "synthetic_seed": data.synthetic_seed,
        "synthetic": data.get("synthetic"),
        "swede_threshold": data.get("swede_threshold", 5),
        "restore_aspect": data.get("restore_aspect", True),
        "manual_dir": data.manual_dir,
        "csv": data.csv,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jaxcerv.data", description="Build datasets.")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build a dataset and print its summary")
    build.add_argument("name", choices=builders.DATASETS)
    build.add_argument("--data_dir", required=True, help="where TFDS writes the dataset")
    build.add_argument("--manual_dir", default=None,
                       help="source folder (atlas, cervix_folder, annocerv)")
    build.add_argument(
        "--csv", default=None,
        help="cervix_folder labels CSV (default manual_dir/labels.csv); annocerv: metadata.csv",
    )
    build.add_argument("--config", default=None, help="config file with get_config()")
    build.add_argument("--grid_size", type=int)
    build.add_argument("--patch_size", type=int)
    build.add_argument("--resize", choices=RESIZE_POLICIES)
    build.add_argument("--include_variants", action=argparse.BooleanOptionalAction, default=None)
    build.add_argument("--num_images", type=int, help="synthetic_cervix size")
    build.add_argument("--synthetic_seed", type=int)
    build.add_argument("--swede_threshold", type=int, help="annocerv: label = swede_score >= this")
    build.add_argument("--restore_aspect", action=argparse.BooleanOptionalAction, default=None,
                       help="annocerv: place by original_width:original_height")
    build.add_argument("--traceback", action="store_true", help="show the full trace on errors")
    return parser


def build(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {**_DEFAULTS, "manual_dir": "", "csv": ""}
    if args.config:
        values.update(_config_values(args.config))
    for key in (*_DEFAULTS, "manual_dir", "csv"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    manual_dir = values.pop("manual_dir")
    builder = builders.make_builder(
        args.name, data_dir=args.data_dir, manual_dir=manual_dir, **values
    )
    return builders.prepare(builder, manual_dir)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        report = build(args)
    except Exception as e:  # one line, not a traceback: the message names the file and problem
        if args.traceback:
            raise
        message = str(e).splitlines()[0] if str(e) else ""
        print(f"error: {type(e).__name__}: {message}", file=sys.stderr)
        return 1
    print(builders.format_summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

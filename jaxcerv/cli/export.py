"""``jaxcerv export (--workdir=DIR | --checkpoint=STEP_DIR) --out=model.jaxexport``: serialise the
inference function (``inference.export``) with its JSON sidecar. Exit 2 for a usage or
run-folder problem."""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import flags

from jaxcerv.cli import common


def define() -> Callable[[list[str]], int]:
    workdir = flags.DEFINE_string("workdir", None, "Run folder: its best checkpoint is exported.")
    checkpoint = flags.DEFINE_string("checkpoint", None, "Or one orbax step directory.")
    out = flags.DEFINE_string("out", None, "File to write, e.g. model.jaxexport.", required=True)

    def main(argv: list[str]) -> int:
        common.no_arguments(argv)
        if workdir.value is None and checkpoint.value is None:
            common.fail("pass --workdir or --checkpoint", common.USAGE)
        from jaxcerv.inference import export
        try:
            meta = export.export_run(workdir.value, out.value, checkpoint.value)
        except (OSError, RuntimeError, ValueError) as e:
            print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
            return common.USAGE
        print(f"wrote {out.value} and {out.value}.json (image {meta['image_size']} px, "
              f"threshold {meta['threshold']:.3f}, data set {meta['dataset']})")
        return 0

    return main

"""``jaxcerv serve (--model=EXPORT | --workdir=W)``: the local web page (``inference.webapp``).

Needs the ``serve`` extra (``pip install 'jaxcerv[serve]'``: Starlette, uvicorn,
python-multipart); without it the command says so in one line.
"""

from __future__ import annotations

import sys

from absl import app, flags

_MODEL = flags.DEFINE_string("model", None, "An exported model (jaxcerv export).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Or a run folder: its selected checkpoint.")
_HOST = flags.DEFINE_string(
    "host", "127.0.0.1", "Address to bind; the default serves this computer only."
)
_PORT = flags.DEFINE_integer("port", 8000, "TCP port.")
_KEEP = flags.DEFINE_string(
    "keep", None, "Keep every upload, its heatmap, weights and JSON line in this folder."
)
_MAX_FILES = flags.DEFINE_integer("max_files", 32, "Most photographs in one upload.")
_MAX_MB = flags.DEFINE_float("max_file_mb", 25.0, "Largest photograph, in MB.")
_MAX_MPX = flags.DEFINE_float("max_megapixels", 50.0, "Largest photograph, in megapixels.")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if (_MODEL.value is None) == (_WORKDIR.value is None):
        raise app.UsageError("pass exactly one of --model=EXPORT and --workdir=DIR")
    try:
        from jaxcerv.inference.webapp import app as webapp_app
    except ModuleNotFoundError as e:
        print(f"error: jaxcerv serve needs the serve extra ({e.name} is missing): "
              "pip install 'jaxcerv[serve]'", file=sys.stderr)
        return 2
    if _HOST.value not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {_HOST.value}: anyone who can reach this address can upload "
              "photographs and read the model's answers", file=sys.stderr)
    limits = webapp_app.Limits(max_file_mb=_MAX_MB.value, max_megapixels=_MAX_MPX.value,
                               max_files=_MAX_FILES.value)
    try:
        webapp_app.serve(workdir=_WORKDIR.value, model=_MODEL.value, host=_HOST.value,
                         port=_PORT.value, keep=_KEEP.value, limits=limits)
    except (OSError, RuntimeError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0

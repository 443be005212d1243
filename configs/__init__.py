"""The built-in configs, shipped inside the package so that `jaxcerv --config=NAME` works from any
folder and from a non-editable install. Each module has ``get_config()``; variants build on
``default``. A ``--config`` value names one of these or a config file path."""

from __future__ import annotations

import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def builtin_names() -> list[str]:
    """The config modules in this package (``default``, ``paper``, ``smoke``, ...)."""
    return sorted(
        f[:-3] for f in os.listdir(_HERE) if f.endswith(".py") and not f.startswith("_")
    )


def resolve(value: str) -> str:
    """A ``--config`` value -> a config file path: an existing file wins, else a built-in name
    (with an optional ``:args`` tail as ml_collections allows); anything else is returned as
    given, for ml_collections to report."""
    path, sep, tail = value.partition(":")
    if os.path.isfile(path) or path not in builtin_names():
        return value
    return os.path.join(_HERE, f"{path}.py") + sep + tail


def resolve_args(args: list[str]) -> list[str]:
    """Command-line args with ``--config=NAME`` / ``--config NAME`` resolved by ``resolve``."""
    out = list(args)
    for i, a in enumerate(out):
        if a.startswith("--config="):
            out[i] = "--config=" + resolve(a.split("=", 1)[1])
        elif a == "--config" and i + 1 < len(out):
            out[i + 1] = resolve(out[i + 1])
    return out

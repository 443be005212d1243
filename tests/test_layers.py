"""The package's layers import downwards only, lazy imports included:
runtime < model, data < evaluation < reporting < training < inference < experiments < cli;
and every folder imports on its own in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_imports import PACKAGE, import_graph

# Folder -> layer; a module may import its own layer or a lower one.
LAYERS = {"configs": 0, "runtime": 0, "model": 1, "data": 1, "evaluation": 2, "reporting": 3,
          "training": 4, "inference": 5, "experiments": 6, "cli": 7}
# Command entry points outside cli/ (python -m jaxcerv.main, python -m jaxcerv.data) are cli.
ENTRIES = {"jaxcerv.main", "jaxcerv.data.__main__"}
FOLDERS = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())


def layer(module: str) -> int:
    if module in ENTRIES:
        return LAYERS["cli"]
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in LAYERS:
        raise KeyError(f"{module} is in no layer: add its folder to LAYERS")
    return LAYERS[parts[1]]


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Every (importer, imported) pair whose target sits in a higher layer than the importer."""
    return sorted((m, t) for m, targets in graph.items() if m != "jaxcerv" for t in targets
                  if layer(t) > layer(m))


def test_the_checker_finds_a_planted_upward_edge():
    toy = {"jaxcerv.model.regulator": {"jaxcerv.runtime.parallel"},
           "jaxcerv.evaluation.metrics": {"jaxcerv.model.regulator", "jaxcerv.evaluation.x"},
           "jaxcerv.data.__main__": {"jaxcerv.cli.data"},  # an entry point is a command
           "jaxcerv.runtime.parallel": set()}
    assert upward_imports(toy) == []
    toy["jaxcerv.model.regulator"].add("jaxcerv.evaluation.metrics")  # model -> evaluation
    toy["jaxcerv.training.train"] = {"jaxcerv.cli.common"}  # training -> cli
    assert upward_imports(toy) == [("jaxcerv.model.regulator", "jaxcerv.evaluation.metrics"),
                                   ("jaxcerv.training.train", "jaxcerv.cli.common")]
    with pytest.raises(KeyError, match="no layer"):
        upward_imports({"jaxcerv.newfolder.x": {"jaxcerv.runtime.parallel"}})


def test_every_module_has_a_layer_and_nothing_imports_upward():
    graph = import_graph()
    assert "jaxcerv.cli.train" in graph and graph["jaxcerv.experiments.runner"]
    assert upward_imports(graph) == []
    # Only cli/ (and the two entry points) reach the command layer.
    assert not [m for m, t in graph.items() if m != "jaxcerv" and layer(m) < LAYERS["cli"]
                and any(x.startswith("jaxcerv.cli") or x == "jaxcerv.main" for x in t)]


def test_flags_and_argv_live_in_cli_only():
    """No library module defines a flag, parses argv or imports a command module."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("cli/") or rel in ("main.py", "data/__main__.py"):
            continue
        text = path.read_text()
        for word in ("argparse", "flags.DEFINE", "DEFINE_config", "sys.argv", "jaxcerv.main",
                     "app.run("):
            if word in text:
                offenders.append(f"{rel}: {word}")
    assert offenders == []


@pytest.mark.parametrize("folder", FOLDERS)
def test_each_folder_imports_in_a_fresh_interpreter(folder):
    modules = sorted(
        f"jaxcerv.{folder}.{p.stem}" for p in (PACKAGE / folder).glob("*.py")
        if p.stem not in ("__init__", "__main__")
    )
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n"
                                              for m in modules)
    proc = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

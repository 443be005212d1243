"""The package's layers import downwards only: no import cycle, and the report reads a run
folder without loading JAX, orbax or TFDS."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jaxcerv"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """jaxcerv module -> the jaxcerv modules it imports (anywhere in the file, lazy ones too)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for t in targets:
                if t in modules and t != name and t != "jaxcerv":
                    graph[name].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (cycle := visit(m)):
                return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


def test_cycle_finder_sees_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_package_has_no_import_cycle():
    graph = import_graph()
    assert "jaxcerv.training.steps" in graph["jaxcerv.training.train"]
    assert find_cycle(graph) is None, find_cycle(graph)


def test_only_main_runs_both_training_and_the_report():
    graph = import_graph()
    importers_of_report = {m for m, deps in graph.items() if "jaxcerv.reporting.report" in deps}
    importers_of_train = {m for m, deps in graph.items() if "jaxcerv.training.train" in deps}
    assert importers_of_report & importers_of_train == {"jaxcerv.cli.train",
                                                        "jaxcerv.experiments.runner"}
    assert "jaxcerv.training.train" not in graph["jaxcerv.reporting.report"]
    assert "jaxcerv.training.train" not in graph["jaxcerv.inference.predict"]


def test_report_imports_no_jax():
    code = (
        "import sys, jaxcerv.reporting.report\n"
        "print(sorted(m for m in ('jax', 'orbax', 'tensorflow_datasets', 'flax') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PACKAGE.parent, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_pyproject_lists_every_package_folder():
    """pyproject lists the packages by hand (configs/ is mapped in from the top level): a new
    folder left off the list would be missing from a wheel and from a fresh editable install."""
    import tomllib

    setup = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {_module_name(p) for p in PACKAGE.rglob("__init__.py")}
    assert set(setup["packages"]) == folders | {"jaxcerv.configs"}
    assert setup["package-dir"] == {"jaxcerv.configs": "configs"}

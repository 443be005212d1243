"""The user's pages hold: every relative link in README.md and docs/ resolves, every
``jaxcerv SUBCOMMAND`` they quote exists, and every ``--config=NAME`` they quote is a built-in
config or a file in the checkout (each subcommand's ``--help`` is run by tests/cli/test_app.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jaxcerv import configs
from jaxcerv.cli.app import COMMANDS

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
COMMAND = re.compile(r"(?<![\w./-])jaxcerv ([a-z_]+)\b")
CONFIG = re.compile(r"--config=([\w./-]+)")


def _code(text: str) -> str:
    """What a page shows as code (fenced blocks and `spans`): prose may say "jaxcerv needs"."""
    fenced = re.findall(r"```.*?```", text, re.S)
    rest = re.sub(r"```.*?```", "", text, flags=re.S)
    return "\n".join(fenced + re.findall(r"`([^`\n]+)`", rest))


def _links(text: str) -> list[str]:
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_the_code_reader_keeps_code_and_drops_prose():
    text = "jaxcerv needs `jaxcerv train --config=smoke`\n```\njaxcerv predict\n```"
    assert COMMAND.findall(_code(text)) == ["predict", "train"]


def test_the_link_checker_sees_a_broken_link():
    assert _links("see [a](docs/a.md#x), [b](https://x.org) and [c](#here)") == ["docs/a.md#x"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    missing = [t for t in _links(page.read_text())
               if not (page.parent / t.split("#", 1)[0]).exists()]
    assert not missing, f"{page.name}: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_quoted_command_and_config_exists(page):
    text = _code(page.read_text())
    unknown = sorted({c for c in COMMAND.findall(text) if c not in COMMANDS})
    assert not unknown, f"{page.name} quotes unknown subcommands {unknown}"
    names = set(configs.builtin_names())
    bad = sorted({c for c in CONFIG.findall(text)
                  if c not in names and c.split(":")[0] not in names
                  and not (REPO / c.split(":")[0]).is_file() and "/path/" not in c
                  and c not in ("NAME", "FILE", "NAME|FILE", "PATH")})
    assert not bad, f"{page.name} quotes configs that do not exist: {bad}"

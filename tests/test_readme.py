"""The README's examples and the guides' code run as written."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# A ```python block right after this comment is shown, not run (it needs a network, a
# launcher or several processes); the comment says why.
NOT_RUN = re.compile(r"<!-- not-run: [^>]+ -->\s*$")
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _example(name: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- readme-example: {name} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README.md has no example marked 'readme-example: {name}'"
    return match.group(1)


def _run(source: str, name: str, monkeypatch, filename: str = "README.md") -> None:
    # dataclasses look their module up in sys.modules, so run the example as a real module.
    module = types.ModuleType(f"readme_{name}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(source, f"{filename}:{name}", "exec"), module.__dict__)


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of a markdown page, in order, without those marked not-run."""
    return [m.group(1) for m in BLOCK.finditer(text) if not NOT_RUN.search(text[:m.start()])]


def test_property_test_example_runs(monkeypatch):
    _run(_example("property-test"), "property_test", monkeypatch)


def test_property_test_example_catches_a_broken_block(monkeypatch):
    # The same example with an apply that mixes rows must fail batch_independent.
    broken = _example("property-test").replace(
        "return x * params[\"gain\"], state", "return x * params[\"gain\"] - x.mean(0), state")
    with pytest.raises(AssertionError, match="batch_independent"):
        _run(broken, "broken", monkeypatch)


def test_quickstart_example_runs(monkeypatch):
    _run(_example("quickstart"), "quickstart", monkeypatch)


def test_python_blocks_skips_marked_blocks():
    text = "```python\na = 1\n```\n<!-- not-run: needs a GPU -->\n```python\nb = 2\n```\n"
    assert python_blocks(text) == ["a = 1\n"]


GUIDES = sorted(p for p in DOCS.rglob("*.md") if python_blocks(p.read_text()))


def test_the_guides_have_examples():
    assert any(p.name == "own-block.md" for p in GUIDES)


@pytest.mark.parametrize("page", GUIDES, ids=[p.relative_to(DOCS).as_posix() for p in GUIDES])
def test_guide_examples_run(page, monkeypatch, tmp_path):
    # One page is one program: its blocks run in order in one namespace, in a scratch folder.
    monkeypatch.chdir(tmp_path)
    source = "\n".join(python_blocks(page.read_text()))
    _run(source, page.stem.replace("-", "_"), monkeypatch, filename=page.relative_to(ROOT).as_posix())

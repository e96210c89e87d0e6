"""The README's examples run as written."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _example(name: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- readme-example: {name} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README.md has no example marked 'readme-example: {name}'"
    return match.group(1)


def _run(source: str, name: str, monkeypatch) -> None:
    # dataclasses look their module up in sys.modules, so run the example as a real module.
    module = types.ModuleType(f"readme_{name}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(source, f"README.md:{name}", "exec"), module.__dict__)


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

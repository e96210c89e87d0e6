"""A saved step's record of module-level values counts only names the module's own code binds."""

from __future__ import annotations

import importlib
import sys
import types

from deepfn.train.compile import saved


class _Program:
    """The one thing ``_module_values`` reads of a compiled program: its traced modules."""

    def __init__(self, module: str):
        source = types.SimpleNamespace(module=module)
        self._info = types.SimpleNamespace(inlined_sources=[source])

    def source_info(self):
        return self._info


def _module(tmp_path, monkeypatch, name: str, text: str) -> types.ModuleType:
    (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return importlib.import_module(name)


SOURCE = """
import math
SCALE = 2.0
if True:
    LIMIT = 3
def helper(x):
    return x * SCALE
"""


def test_a_global_installed_by_the_compiler_does_not_count(tmp_path, monkeypatch):
    module = _module(tmp_path, monkeypatch, "traced_a", SOURCE)
    before = saved._module_values(_Program("traced_a"))
    module.sub_native_available = True     # what Dynamo installs while tracing
    assert saved._module_values(_Program("traced_a")) == before


def test_a_rebound_module_constant_counts(tmp_path, monkeypatch):
    module = _module(tmp_path, monkeypatch, "traced_b", SOURCE)
    before = saved._module_values(_Program("traced_b"))
    module.SCALE = 3.0
    assert saved._module_values(_Program("traced_b")) != before
    module.SCALE = 2.0
    module.LIMIT = 4                       # bound inside a top-level `if`
    assert saved._module_values(_Program("traced_b")) != before


def test_names_bound_by_source(tmp_path, monkeypatch):
    module = _module(tmp_path, monkeypatch, "traced_c", SOURCE)
    assert saved._names_bound_by_source(module) == {"math", "SCALE", "LIMIT", "helper"}

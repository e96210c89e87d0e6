"""deepfn's Dynamo settings wait for Dynamo's import (deepfn._torch.dynamo_import): importing
deepfn leaves Dynamo unimported, and every compile still sees the settings."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from deepfn._torch import dynamo_import

PROBE = """
import sys
{before}
import deepfn, deepfn.nn, deepfn.models, deepfn.train, deepfn.optim, deepfn.data, deepfn.testing
import deepfn.distributed, deepfn.interop
print("dynamo_after_deepfn", "torch._dynamo" in sys.modules)
import einops, torch, torch._dynamo
from torch._dynamo import trace_rules, variables
from deepfn.random import draw
print("rearrange_in_graph", trace_rules.lookup_callable(einops.rearrange) is variables.TorchInGraphFunctionVariable)
print("draw_constant", getattr(draw._native_available, "_dynamo_marked_constant", False))
"""


def _probe(before: str) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(before=before)], capture_output=True,
                         text=True, check=True, timeout=300).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


def test_importing_deepfn_leaves_dynamo_unimported_and_its_import_applies_the_settings():
    seen = _probe(before="")
    assert seen == {"dynamo_after_deepfn": "False", "rearrange_in_graph": "True", "draw_constant": "True"}


def test_the_settings_apply_at_once_when_dynamo_came_first():
    seen = _probe(before="import torch._dynamo")
    assert seen == {"dynamo_after_deepfn": "True", "rearrange_in_graph": "True", "draw_constant": "True"}


def test_a_compile_in_a_fresh_process_puts_rearrange_in_the_graph_as_one_call():
    code = textwrap.dedent("""
        import einops, torch
        from deepfn.nn._einops import rearrange
        targets = []
        def backend(gm, example_inputs):
            targets.extend(node.target for node in gm.graph.nodes if node.op == "call_function")
            return gm.forward
        f = torch.compile(lambda x: rearrange(x, "b (h d) -> b h d", h=2) * 2, backend=backend, fullgraph=True)
        f(torch.randn(3, 4))
        print(sum(t is einops.rearrange for t in targets), len(targets))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "2"]   # rearrange itself, then the product


def test_a_failing_setting_warns_and_the_next_ones_still_run(monkeypatch):
    finder = dynamo_import._DynamoFinder()
    ran = []
    finder.callbacks += [lambda: 1 / 0, lambda: ran.append("second")]
    with pytest.warns(RuntimeWarning, match="ZeroDivisionError"):
        finder.run()
    assert ran == ["second"] and finder.callbacks == []


def test_the_finder_answers_only_for_dynamo():
    assert dynamo_import._DynamoFinder().find_spec("json", None) is None

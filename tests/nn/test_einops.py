"""deepfn.nn._einops: einops' own rearrange, one graph op under torch.compile that AOTAutograd's
cache accepts, the same values compiled (through grad and vmap) as eagerly."""

from __future__ import annotations

import einops
import pytest
import torch
from torch._dynamo.utils import counters

from deepfn import random
from deepfn.nn import _einops
from deepfn.nn.attention import MultiHeadAttention


def _graph_targets(fn, *args):
    """The call targets of the one graph Dynamo captures from ``fn(*args)`` (fullgraph)."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.compile(fn, backend=backend, fullgraph=True)(*args)
    assert len(graphs) == 1
    return [node.target for node in graphs[0].graph.nodes if node.op in ("call_function", "call_method")]


def test_rearrange_is_einops_rearrange():
    # einops' own function: AOTAutograd's cache allow-lists it by name (a wrapper is bypassed).
    assert _einops.rearrange is einops.rearrange
    assert f"{_einops.rearrange.__module__}.{_einops.rearrange.__name__}" == "einops.einops.rearrange"


def test_one_graph_op_per_call():
    # Dynamo does not trace einops' pattern parser: each call is one node of the graph.
    def split_merge(x):
        heads = _einops.rearrange(x, "b t (h d) -> b h t d", h=3)
        return _einops.rearrange(heads, "b h t d -> b t (h d)")

    assert _graph_targets(split_merge, torch.randn(2, 5, 12)) == [einops.rearrange] * 2


def test_attention_splits_and_merges_heads_with_rearrange():
    mha = MultiHeadAttention(12, 3)
    params, _ = mha.init(random.key(0))
    targets = _graph_targets(lambda p, x: mha.apply(p, {}, x)[0], params, torch.randn(2, 5, 12))
    assert targets.count(einops.rearrange) == 3            # q; k and v together; the merge
    assert not {"unflatten", "flatten", "chunk"} & {t for t in targets if isinstance(t, str)}


def test_compiled_grad_vmap_equals_eager():
    def loss(w, x):
        heads = _einops.rearrange(x * w, "t (h d) -> h t d", h=2)
        return _einops.rearrange(heads.sin(), "h t d -> t (h d)").mean(0).sum()

    per_example = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))
    w, x = torch.tensor(1.5), torch.randn(3, 4, 6)
    torch.testing.assert_close(torch.compile(per_example, fullgraph=True)(w, x), per_example(w, x))


def test_aot_autograd_cache_accepts_the_graph():
    def loss(w, x):
        return _einops.rearrange(x * w, "b t (h d) -> b h t d", h=2).sin().sum()

    torch.compiler.reset()
    counters.clear()
    torch.compile(torch.func.grad(loss), fullgraph=True)(torch.tensor(2.0), torch.randn(2, 3, 8))
    assert counters["aot_autograd"]["total"] == 1
    assert counters["aot_autograd"]["autograd_cache_bypass"] == 0


@pytest.mark.parametrize("shape", [(2, 3, 8), (5, 7, 8)])
def test_dynamic_shapes(shape):
    fn = torch.compile(lambda x: _einops.rearrange(x, "b t (h d) -> b h t d", h=2) * 2,
                       dynamic=True, fullgraph=True)
    x = torch.randn(shape)
    torch.testing.assert_close(fn(x), einops.rearrange(x, "b t (h d) -> b h t d", h=2) * 2)

"""plain_eager: the one predicate behind every eager-only fast path."""

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from deepfn._eager import plain_eager


def test_true_on_plain_tensors_and_false_for_none():
    assert plain_eager([torch.ones(2)]) and not plain_eager([])


def test_false_under_a_transform_compile_and_make_fx_trace():
    seen = []

    def probe(x):
        seen.append(plain_eager([x]))
        return x * 2

    torch.func.vmap(probe)(torch.ones(3, 2))
    torch.compile(probe, backend="eager", fullgraph=True)(torch.ones(2))
    make_fx(probe)(torch.ones(2))        # torch.compiler.precompile and export trace this way
    assert seen == [False, False, False]

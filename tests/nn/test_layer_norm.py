"""LayerNorm against torch.nn.LayerNorm: values, gradients, names, transforms, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from deepfn import interop, nn, random, tree
from tests.utils import TOL, assert_apply_pure, assert_trees_close


def twin_of(shape, dtype=torch.float32):
    torch.manual_seed(0)
    twin = torch.nn.LayerNorm(shape, dtype=dtype)
    with torch.no_grad():
        twin.weight.uniform_(0.5, 1.5)
        twin.bias.uniform_(-0.5, 0.5)
    return twin


@pytest.mark.parametrize("shape, x_shape", [(6, (3, 6)), ((4, 5), (2, 4, 5)), (3, (2, 2, 3))])
def test_matches_torch_values_and_grads(shape, x_shape, dtype, getkey):
    block = nn.LayerNorm(shape)
    twin = twin_of(shape, dtype)
    params, state = interop.from_torch(block, twin)
    x = 1 + 2 * random.normal(getkey(), x_shape, dtype)
    y, _ = block.apply(params, state, x)
    assert_trees_close(y, twin(x).detach(), **TOL[dtype])

    cot = random.normal(getkey(), x_shape, dtype)
    g_params, g_x = torch.func.grad(lambda p, x: (block.apply(p, state, x)[0] * cot).sum(), argnums=(0, 1))(params, x)
    xt = x.clone().requires_grad_()
    (twin(xt) * cot).sum().backward()
    assert_trees_close(g_x, xt.grad, **TOL[dtype])
    assert_trees_close(g_params, {"weight": twin.weight.grad, "bias": twin.bias.grad}, **TOL[dtype])


def test_init_names_shapes_and_round_trip(getkey):
    block = nn.LayerNorm((3, 4), eps=1e-6)
    params, state = block.init(getkey())
    assert state == {}
    assert_trees_close(params, dict(torch.nn.LayerNorm((3, 4)).state_dict()), rtol=0, atol=0)
    twin = interop.to_torch(block, params, state, twin_of((3, 4)))
    assert_trees_close(interop.from_torch(block, twin)[0], params, rtol=0, atol=0)


def test_half_precision_output_dtype_and_values(getkey):
    block = nn.LayerNorm(8)
    params, state = block.init(getkey())
    x = 5 + random.normal(getkey(), (4, 8)).to(torch.bfloat16)
    y, _ = block.apply(params, state, x)
    assert y.dtype == torch.bfloat16
    assert_trees_close(y, block.apply(params, state, x.float())[0].to(torch.bfloat16), rtol=0, atol=0)


def test_vmap_over_rows_equals_batched_call(getkey):
    block = nn.LayerNorm(5)
    params, state = block.init(getkey())
    x = random.normal(getkey(), (3, 4, 5))
    per_row = torch.func.vmap(lambda r: block.apply(params, state, r)[0])(x)
    assert_trees_close(per_row, block.apply(params, state, x)[0])


def test_compile_fullgraph_equals_eager(getkey):
    block = nn.LayerNorm(3)
    params, state = block.init(getkey())
    x = random.normal(getkey(), (2, 3))
    compiled = torch.compile(lambda p, x: block.apply(p, {}, x)[0], fullgraph=True)
    assert_trees_close(compiled(params, x), block.apply(params, state, x)[0])


def test_apply_is_pure(getkey):
    block = nn.LayerNorm(3)
    params, state = block.init(getkey())
    assert_apply_pure(block, params, state, random.normal(getkey(), (2, 3)))


@given(lead=st.lists(st.integers(1, 3), max_size=2), norm=st.lists(st.integers(1, 4), min_size=1, max_size=2))
def test_output_shape_and_normalisation(lead, norm):
    block = nn.LayerNorm(tuple(norm))
    params, state = block.init(random.key(0))
    x = torch.arange(float(torch.tensor([*lead, *norm]).prod())).reshape(*lead, *norm).to(torch.float64).sin()
    y, _ = block.apply(tree.cast(params, torch.float64), state, x)
    assert y.shape == x.shape
    dims = tuple(range(-len(norm), 0))
    assert torch.allclose(y.mean(dims), torch.zeros(()).double(), atol=1e-9)


def test_rejects_wrong_trailing_shape():
    block = nn.LayerNorm((3, 4))
    with pytest.raises(ValueError, match=r"LayerNorm\(normalized_shape=\(3, 4\), eps=1e-05\)\.apply: x must end in \[3, 4\] \(normalized_shape\); got float32 \[2, 4, 3\]"):
        block.apply(block.init(random.key(0))[0], {}, torch.zeros(2, 4, 3))


def test_rejects_too_low_rank():
    block = nn.LayerNorm((3, 4))
    with pytest.raises(ValueError, match=r"LayerNorm\(.*\)\.apply: x must end in \[3, 4\].*got float32 \[4\]"):
        block.apply(block.init(random.key(0))[0], {}, torch.zeros(4))


def test_rejects_integer_input():
    block = nn.LayerNorm(3)
    with pytest.raises(TypeError, match=r"LayerNorm\(.*\)\.apply: x must be floating point; got int32"):
        block.apply(block.init(random.key(0))[0], {}, torch.zeros(2, 3, dtype=torch.int32))


@pytest.mark.parametrize("kwargs, match", [
    (dict(normalized_shape=0), r"normalized_shape\[0\] must be a positive int"),
    (dict(normalized_shape=(3, -1)), r"normalized_shape\[1\] must be a positive int"),
    (dict(normalized_shape=3, eps=0.0), "eps must be > 0"),
])
def test_rejects_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nn.LayerNorm(**kwargs)

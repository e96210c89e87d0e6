"""Dense against torch.nn.Linear: values, gradients, names, transforms, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from deepfn import interop, nn, random, tree
from tests.utils import TOL, assert_apply_pure, assert_trees_close


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(5,), (2, 3), ()])
def test_matches_torch_values_and_grads(bias, lead, dtype, getkey):
    block = nn.Dense(4, 3, bias)
    torch.manual_seed(0)
    twin = torch.nn.Linear(4, 3, bias, dtype=dtype)
    params, state = interop.from_torch(block, twin)
    x = random.normal(getkey(), (*lead, 4), dtype)
    y, _ = block.apply(params, state, x)
    assert_trees_close(y, twin(x).detach(), **TOL[dtype])

    cot = random.normal(getkey(), tuple(y.shape), dtype)
    g_params, g_x = torch.func.grad(lambda p, x: (block.apply(p, state, x)[0] * cot).sum(), argnums=(0, 1))(params, x)
    xt = x.clone().requires_grad_()
    (twin(xt) * cot).sum().backward()
    assert_trees_close(g_x, xt.grad, **TOL[dtype])
    assert_trees_close(g_params, tree.unflatten({n: p.grad for n, p in twin.named_parameters()}), **TOL[dtype])


@pytest.mark.parametrize("bias", [True, False])
def test_names_shapes_and_round_trip(bias, getkey):
    block = nn.Dense(6, 2, bias)
    params, state = block.init(getkey())
    twin = torch.nn.Linear(6, 2, bias)
    flat = tree.flatten(params) | tree.flatten(state)
    assert {k: tuple(v.shape) for k, v in flat.items()} == {k: tuple(v.shape) for k, v in twin.state_dict().items()}
    interop.to_torch(block, params, state, twin)
    assert_trees_close(interop.from_torch(block, twin)[0], params, rtol=0, atol=0)


def test_init_follows_torch_default_bounds(getkey):
    params, _ = nn.Dense(400, 300).init(getkey())
    bound = 1 / math.sqrt(400)
    assert params["weight"].abs().max() <= bound and params["weight"].abs().max() > 0.99 * bound
    assert params["bias"].abs().max() <= bound
    assert abs(params["weight"].std().item() - bound / math.sqrt(3)) < 0.02 * bound


def test_vmap_over_rows_and_params(getkey):
    block = nn.Dense(4, 3)
    params, state = block.init(getkey())
    x = random.normal(getkey(), (5, 4))
    rows = torch.func.vmap(lambda r: block.apply(params, state, r)[0])(x)
    assert_trees_close(rows, block.apply(params, state, x)[0])
    members = [block.init(getkey())[0] for _ in range(2)]
    ys = torch.func.vmap(lambda p: block.apply(p, state, x)[0])(tree.stack(members))
    for i, p in enumerate(members):
        assert_trees_close(ys[i], block.apply(p, state, x)[0])


def test_compile_fullgraph_equals_eager(getkey):
    block = nn.Dense(3, 2)
    params, state = block.init(getkey())
    x = random.normal(getkey(), (2, 3))
    compiled = torch.compile(lambda p, x: block.apply(p, {}, x)[0], fullgraph=True)
    assert_trees_close(compiled(params, x), block.apply(params, state, x)[0])


def test_apply_is_pure(getkey):
    block = nn.Dense(3, 2)
    params, state = block.init(getkey())
    assert_apply_pure(block, params, state, random.normal(getkey(), (2, 3)))


@given(lead=st.lists(st.integers(1, 3), max_size=3), fin=st.integers(1, 5), fout=st.integers(1, 5),
       bias=st.booleans())
def test_output_shape(lead, fin, fout, bias):
    block = nn.Dense(fin, fout, bias)
    params, state = block.init(random.key(1))
    y, _ = block.apply(params, state, torch.ones(*lead, fin, dtype=torch.float64).float())
    assert y.shape == (*lead, fout) and y.dtype == torch.float32


def test_rejects_wrong_feature_size():
    block = nn.Dense(4, 3)
    with pytest.raises(ValueError, match=r"Dense\(in_features=4, out_features=3, bias=True\)\.apply: x must have size 4 \(in_features\) in axis -1; got float32 \[2, 5\]"):
        block.apply(block.init(random.key(0))[0], {}, torch.zeros(2, 5))


def test_rejects_scalar_input():
    block = nn.Dense(4, 3)
    with pytest.raises(ValueError, match=r"Dense\(.*\)\.apply: x must have size 4 .*got float32 \[\]"):
        block.apply(block.init(random.key(0))[0], {}, torch.zeros(()))


def test_rejects_integer_input():
    block = nn.Dense(4, 3)
    with pytest.raises(TypeError, match=r"Dense\(.*\)\.apply: x must be floating point; got int64 \[2, 4\]"):
        block.apply(block.init(random.key(0))[0], {}, torch.zeros(2, 4, dtype=torch.int64))


@pytest.mark.parametrize("args", [(0, 3), (3, -1), (2.5, 3), (True, 3)])
def test_rejects_bad_config(args):
    with pytest.raises(ValueError, match="Dense: .* must be a positive int"):
        nn.Dense(*args)

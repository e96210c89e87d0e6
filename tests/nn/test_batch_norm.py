"""BatchNorm against torch.nn.BatchNorm1d/2d: values, gradients, running statistics."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from deepfn import interop, nn, random, tree
from tests.utils import TOL, assert_trees_close

SHAPES = {"1d": (8, 5), "1d_seq": (4, 5, 3), "2d": (3, 5, 4, 4)}


def twin_of(shape, dtype=torch.float32, **kwargs) -> torch.nn.Module:
    """The torch twin for this input rank, with non-trivial affine params and running stats."""
    torch.manual_seed(0)
    cls = torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d
    twin = cls(shape[1], dtype=dtype, **kwargs)
    with torch.no_grad():
        twin.weight.uniform_(0.5, 1.5)
        twin.bias.uniform_(-0.5, 0.5)
        twin.running_mean.uniform_(-1, 1)
        twin.running_var.uniform_(0.5, 2)
    return twin


def compare_with_twin(shape, dtype, train, getkey):
    block = nn.BatchNorm(shape[1])
    twin = twin_of(shape, dtype).train(train)
    params, state = interop.from_torch(block, twin)
    x = 2 + 3 * random.normal(getkey(), shape, dtype)
    y, new_state = block.apply(params, state, x, train=train)
    xt = x.clone().requires_grad_()
    yt = twin(xt)
    assert_trees_close(y, yt.detach(), **TOL[dtype])

    cot = random.normal(getkey(), shape, dtype)
    def loss(p, x):
        return (block.apply(p, state, x, train=train)[0] * cot).sum()
    g_params, g_x = torch.func.grad(loss, argnums=(0, 1))(params, x)
    (yt * cot).sum().backward()
    assert_trees_close(g_x, xt.grad, **TOL[dtype])
    assert_trees_close(g_params, {"weight": twin.weight.grad, "bias": twin.bias.grad}, **TOL[dtype])
    return new_state, twin


@pytest.mark.parametrize("layout", list(SHAPES))
def test_eval_matches_torch_values_and_grads(layout, dtype, getkey):
    compare_with_twin(SHAPES[layout], dtype, False, getkey)


@pytest.mark.parametrize("layout", list(SHAPES))
def test_train_matches_torch_values_and_grads(layout, dtype, getkey):
    new_state, twin = compare_with_twin(SHAPES[layout], dtype, True, getkey)
    assert_trees_close(new_state, dict(twin.named_buffers()), **TOL[dtype])


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
@pytest.mark.parametrize("layout", ["1d", "2d"])
def test_running_statistics_after_three_steps_equal_torch(layout, momentum, dtype, getkey):
    shape = SHAPES[layout]
    block = nn.BatchNorm(shape[1], momentum=momentum)
    twin = twin_of(shape, dtype, momentum=momentum).train()
    params, state = interop.from_torch(block, twin)
    for _ in range(3):
        x = 1 + 2 * random.normal(getkey(), shape, dtype)
        y, state = block.apply(params, state, x, train=True)
        assert_trees_close(y, twin(x).detach(), **TOL[dtype])
    assert state["num_batches_tracked"].dtype == torch.int64 and int(state["num_batches_tracked"]) == 3
    assert_trees_close(state, dict(twin.named_buffers()), **TOL[dtype])


@pytest.mark.parametrize("spread", [1e-1, 1e-4, 1e-6])
def test_running_variance_of_near_constant_channels_keeps_torch_relative_precision(spread, getkey):
    """A batch variance far below eps is still updated as torch updates it, to float rounding."""
    shape = SHAPES["2d"]
    block = nn.BatchNorm(shape[1], momentum=None)     # cumulative: the first step stores the batch variance
    twin = twin_of(shape, momentum=None).train()
    params, state = interop.from_torch(block, twin)
    x = 5 + spread * random.normal(getkey(), shape)
    _, state = block.apply(params, state, x, train=True)
    twin(x)
    assert_trees_close(state["running_var"], twin.running_var, rtol=1e-6, atol=0)
    assert_trees_close(state["running_mean"], twin.running_mean, rtol=1e-6, atol=0)


def test_fresh_state_and_names_match_torch(getkey):
    for shape in SHAPES.values():
        block = nn.BatchNorm(shape[1])
        params, state = block.init(getkey())
        cls = torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d
        expected = cls(shape[1]).state_dict()
        flat = tree.flatten(params) | tree.flatten(state)
        assert_trees_close(flat, dict(expected), rtol=0, atol=0)     # names, shapes, dtypes, values


def test_round_trip_through_torch(getkey):
    block = nn.BatchNorm(5)
    twin = twin_of(SHAPES["2d"])
    params, state = interop.from_torch(block, twin)
    _, state = block.apply(params, state, random.normal(getkey(), SHAPES["2d"]), train=True)
    other = interop.to_torch(block, params, state, torch.nn.BatchNorm2d(5))
    back_params, back_state = interop.from_torch(block, other)
    assert_trees_close(back_params, params, rtol=0, atol=0)
    assert_trees_close(back_state, state, rtol=0, atol=0)


def test_eval_returns_the_same_state_object(getkey):
    block = nn.BatchNorm(5)
    params, state = block.init(getkey())
    _, out = block.apply(params, state, random.normal(getkey(), (4, 5)))
    assert out is state


def test_train_is_pure_and_returns_new_state(getkey):
    block = nn.BatchNorm(5)
    params, state = block.init(getkey())
    x = random.normal(getkey(), (4, 5, 2, 2))
    inputs = (x, *tree.leaves(params), *tree.leaves(state))
    before = [(t.clone(), t._version) for t in inputs]
    _, new_state = block.apply(params, state, x, train=True)
    assert new_state is not state and set(new_state) == set(state)
    for t, (value, version) in zip(inputs, before, strict=True):
        assert torch.equal(t, value) and t._version == version
    assert not torch.equal(new_state["running_mean"], state["running_mean"])


@pytest.mark.parametrize("layout", ["1d", "2d"])
@pytest.mark.parametrize("train", [False, True])
def test_bfloat16_input_matches_the_twin_under_autocast(layout, train, getkey):
    """bf16 x with float32 params and statistics: autocast's values, bf16 out, float32 state."""
    shape = (64, 8, 6, 6) if layout == "2d" else (64, 8)     # large enough for the kernel's blocked sums
    block = nn.BatchNorm(shape[1])
    twin = twin_of(shape).train(train)
    params, state = interop.from_torch(block, twin)
    x = (3 + 2 * random.normal(getkey(), shape)).to(torch.bfloat16).requires_grad_()
    y, new_state = block.apply(params, state, x, train=train)
    xt = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", torch.bfloat16):
        yt = twin(xt)
    assert y.dtype == yt.dtype == torch.bfloat16
    assert_trees_close(y.float(), yt.detach().float(), rtol=0, atol=0)
    assert all(t.dtype in (torch.float32, torch.int64) for t in tree.leaves(new_state))
    assert_trees_close(new_state, dict(twin.named_buffers()), rtol=0, atol=0)
    cot = random.normal(getkey(), shape).to(torch.bfloat16)
    (gx,) = torch.autograd.grad((y * cot).float().sum(), x)
    (yt * cot).float().sum().backward()
    assert_trees_close(gx.float(), xt.grad.float(), rtol=0, atol=0)


def test_vmap_over_stacked_batches(getkey):
    """vmap over a leading axis of independent batches equals one call per batch."""
    block = nn.BatchNorm(3)
    params, state = block.init(getkey())
    xs = random.normal(getkey(), (4, 6, 3, 2, 2))
    for train in (True, False):
        ys, states = torch.func.vmap(lambda x, train=train: block.apply(params, state, x, train=train))(xs)
        for i in range(xs.shape[0]):
            y, s = block.apply(params, state, xs[i], train=train)
            assert_trees_close(ys[i], y)
            assert_trees_close(tree.map(lambda t, i=i: t[i], states), s)   # vmap stacks outputs
    flat_y, _ = block.apply(params, state, xs.flatten(0, 1))
    assert_trees_close(ys.flatten(0, 1), flat_y)


def test_compile_fullgraph_equals_eager(getkey):
    block = nn.BatchNorm(3)
    params, state = block.init(getkey())
    x = random.normal(getkey(), (2, 3, 2, 2))
    compiled = torch.compile(lambda p, s, x: block.apply(p, s, x, train=True), fullgraph=True)
    assert_trees_close(compiled(params, state, x), block.apply(params, state, x, train=True))


@given(batch=st.integers(2, 4), channels=st.integers(1, 4), spatial=st.lists(st.integers(1, 3), max_size=3),
       train=st.booleans())
def test_output_shape_and_state_shapes(batch, channels, spatial, train):
    block = nn.BatchNorm(channels)
    params, state = block.init(random.key(0))
    x = torch.linspace(-1, 1, batch * channels * (1 if not spatial else int(torch.tensor(spatial).prod())))
    x = x.reshape(batch, channels, *spatial)
    y, new_state = block.apply(params, state, x, train=train)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert {k: v.shape for k, v in new_state.items()} == {k: v.shape for k, v in state.items()}


@pytest.fixture
def bn():
    block = nn.BatchNorm(3)
    return block, *block.init(random.key(0))


def test_rejects_one_dimensional_input(bn):
    block, params, state = bn
    with pytest.raises(ValueError, match=r"BatchNorm\(num_features=3.*\)\.apply: x must be 2-d or 3-d or 4-d or 5-d .*got float32 \[3\]"):
        block.apply(params, state, torch.zeros(3))


def test_rejects_wrong_channel_count(bn):
    block, params, state = bn
    with pytest.raises(ValueError, match=r"BatchNorm\(.*\)\.apply: x must have size 3 \(num_features\) in axis 1; got float32 \[2, 4, 5, 5\]"):
        block.apply(params, state, torch.zeros(2, 4, 5, 5))


def test_rejects_integer_input(bn):
    block, params, state = bn
    with pytest.raises(TypeError, match=r"BatchNorm\(.*\)\.apply: x must be floating point; got int64 \[2, 3\]"):
        block.apply(params, state, torch.zeros(2, 3, dtype=torch.int64))


def test_rejects_single_value_per_channel_in_training(bn):
    block, params, state = bn
    with pytest.raises(ValueError, match=r"BatchNorm\(.*\)\.apply: train=True needs more than 1 value per channel.*got float32 \[1, 3\]"):
        block.apply(params, state, torch.zeros(1, 3), train=True)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):   # torch agrees
        torch.nn.BatchNorm1d(3).train()(torch.zeros(1, 3))


def test_single_row_is_fine_in_eval_and_with_spatial_axes(bn):
    block, params, state = bn
    assert block.apply(params, state, torch.zeros(1, 3))[0].shape == (1, 3)
    assert block.apply(params, state, torch.ones(1, 3, 2, 2), train=True)[0].shape == (1, 3, 2, 2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_features=0), "num_features must be a positive int"),
    (dict(num_features=3, momentum=1.5), r"momentum must be a float in \[0, 1\] or None"),
    (dict(num_features=3, eps=0.0), "eps must be a float > 0"),
])
def test_rejects_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nn.BatchNorm(**kwargs)

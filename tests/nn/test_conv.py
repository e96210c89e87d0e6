"""Conv2d against torch.nn.Conv2d: values, gradients, names, transforms, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from deepfn import interop, nn, random, tree
from tests.utils import TOL, assert_apply_pure, assert_trees_close

CONFIGS = {
    "k3": dict(in_channels=3, out_channels=4, kernel_size=3),
    "strided": dict(in_channels=2, out_channels=3, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), bias=False),
    "dilated_grouped": dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, dilation=2, groups=2),
    "same": dict(in_channels=2, out_channels=2, kernel_size=(3, 5), padding="same"),
}


def twin_of(block: nn.Conv2d, dtype=torch.float32) -> torch.nn.Conv2d:
    torch.manual_seed(0)
    return torch.nn.Conv2d(block.in_channels, block.out_channels, block.kernel_size, block.stride,
                           block.padding, block.dilation, block.groups, block.bias, dtype=dtype)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_torch_values_and_grads(name, dtype, getkey):
    block = nn.Conv2d(**CONFIGS[name])
    twin = twin_of(block, dtype)
    params, state = interop.from_torch(block, twin)
    x = random.normal(getkey(), (2, block.in_channels, 7, 8), dtype)
    y, _ = block.apply(params, state, x)
    assert_trees_close(y, twin(x).detach(), **TOL[dtype])

    cot = random.normal(getkey(), tuple(y.shape), dtype)
    def loss(p, x):
        return (block.apply(p, state, x)[0] * cot).sum()
    g_params, g_x = torch.func.grad(loss, argnums=(0, 1))(params, x)
    xt = x.clone().requires_grad_()
    (twin(xt) * cot).sum().backward()
    assert_trees_close(g_x, xt.grad, **TOL[dtype])
    assert_trees_close(g_params, tree.unflatten({n: p.grad for n, p in twin.named_parameters()}), **TOL[dtype])


def test_unbatched_image_matches_torch(getkey):
    block = nn.Conv2d(3, 5, 3, padding=1)
    twin = twin_of(block)
    params, state = interop.from_torch(block, twin)
    x = random.normal(getkey(), (3, 6, 6))
    assert_trees_close(block.apply(params, state, x)[0], twin(x).detach())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_names_shapes_and_round_trip(name, getkey):
    block = nn.Conv2d(**CONFIGS[name])
    params, state = block.init(getkey())
    twin = twin_of(block)
    flat = tree.flatten(params) | tree.flatten(state)
    assert {k: tuple(v.shape) for k, v in flat.items()} == {k: tuple(v.shape) for k, v in twin.state_dict().items()}
    interop.to_torch(block, params, state, twin)
    back, back_state = interop.from_torch(block, twin)
    assert_trees_close(back, params, rtol=0, atol=0)
    assert back_state == {}


def test_init_follows_torch_default_bounds(getkey):
    block = nn.Conv2d(16, 64, (3, 5), groups=2)
    params, state = block.init(getkey())
    assert state == {}
    assert params["weight"].shape == (64, 8, 3, 5) and params["weight"].dtype == torch.float32
    bound = 1 / math.sqrt(8 * 3 * 5)
    for leaf in (params["weight"], params["bias"]):
        assert leaf.abs().max() <= bound
    w = params["weight"]
    assert w.abs().max() > 0.95 * bound
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.05 * bound   # std of U(-b, b)
    assert torch.equal(block.init(random.key(3))[0]["weight"], block.init(random.key(3))[0]["weight"])
    assert not torch.equal(block.init(random.key(3))[0]["weight"], block.init(random.key(4))[0]["weight"])


def test_vmap_over_images_equals_batched_call(getkey):
    block = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    params, state = block.init(getkey())
    x = random.normal(getkey(), (4, 2, 7, 7))
    per_image = torch.func.vmap(lambda img: block.apply(params, state, img)[0])(x)
    assert_trees_close(per_image, block.apply(params, state, x)[0])


def test_vmap_over_stacked_params_equals_loop(getkey):
    block = nn.Conv2d(2, 3, 3)
    members = [block.init(getkey())[0] for _ in range(3)]
    x = random.normal(getkey(), (2, 2, 5, 5))
    ys = torch.func.vmap(lambda p: block.apply(p, {}, x)[0])(tree.stack(members))
    for i, p in enumerate(members):
        assert_trees_close(ys[i], block.apply(p, {}, x)[0])


def test_compile_fullgraph_equals_eager(getkey):
    block = nn.Conv2d(2, 3, 3, padding=1)
    params, state = block.init(getkey())
    x = random.normal(getkey(), (1, 2, 4, 4))
    compiled = torch.compile(lambda p, x: block.apply(p, {}, x)[0], fullgraph=True)
    assert_trees_close(compiled(params, x), block.apply(params, state, x)[0])


def test_apply_is_pure(getkey):
    block = nn.Conv2d(2, 3, 3)
    params, state = block.init(getkey())
    assert_apply_pure(block, params, state, random.normal(getkey(), (2, 2, 5, 5)))


@given(batch=st.integers(1, 3), cin=st.integers(1, 3), cout=st.integers(1, 3), k=st.integers(1, 3),
       stride=st.integers(1, 3), pad=st.integers(0, 2), dil=st.integers(1, 2),
       h=st.integers(5, 9), w=st.integers(5, 9), bias=st.booleans())
def test_output_shape_matches_torch(batch, cin, cout, k, stride, pad, dil, h, w, bias):
    block = nn.Conv2d(cin, cout, k, stride, pad, bias, dilation=dil)
    params, state = block.init(random.key(0))
    x = torch.zeros(batch, cin, h, w)
    y, _ = block.apply(params, state, x)
    expected = torch.nn.functional.conv2d(x, params["weight"], stride=stride, padding=pad, dilation=dil).shape
    assert y.shape == expected and y.dtype == x.dtype
    assert block.output_size(h, w) == tuple(expected[2:])


@pytest.fixture
def conv():
    block = nn.Conv2d(3, 4, 3)
    return block, block.init(random.key(0))[0]


def test_rejects_wrong_rank(conv):
    block, params = conv
    with pytest.raises(ValueError, match=r"Conv2d\(.*\)\.apply: x must be 3-d or 4-d .*got float32 \[3, 8\]"):
        block.apply(params, {}, torch.zeros(3, 8))


def test_rejects_wrong_channel_count(conv):
    block, params = conv
    with pytest.raises(ValueError, match=r"Conv2d\(.*\)\.apply: x must have size 3 \(in_channels\) in axis -3; got float32 \[2, 5, 8, 8\]"):
        block.apply(params, {}, torch.zeros(2, 5, 8, 8))


def test_rejects_integer_images(conv):
    block, params = conv
    with pytest.raises(TypeError, match=r"Conv2d\(.*\)\.apply: x must be floating point; got uint8"):
        block.apply(params, {}, torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_rejects_image_smaller_than_kernel(conv):
    block, params = conv
    with pytest.raises(ValueError, match=r"Conv2d\(.*\)\.apply: x is too small for kernel_size=3"):
        block.apply(params, {}, torch.zeros(2, 3, 2, 8))


@pytest.mark.parametrize("kwargs, match", [
    (dict(in_channels=0, out_channels=2, kernel_size=3), "in_channels must be a positive int"),
    (dict(in_channels=3, out_channels=2, kernel_size=3, groups=2), "divisible by groups"),
    (dict(in_channels=2, out_channels=2, kernel_size=0), "kernel_size must be an int >= 1"),
    (dict(in_channels=2, out_channels=2, kernel_size=(3, 3, 3)), "kernel_size must be an int >= 1 or a pair"),
    (dict(in_channels=2, out_channels=2, kernel_size=3, stride=0), "stride must be an int >= 1"),
    (dict(in_channels=2, out_channels=2, kernel_size=3, padding=-1), "padding must be an int >= 0"),
    (dict(in_channels=2, out_channels=2, kernel_size=3, padding="full"), "padding must be an int, a pair, 'valid' or 'same'"),
    (dict(in_channels=2, out_channels=2, kernel_size=3, stride=2, padding="same"), "padding='same' needs stride 1"),
])
def test_rejects_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nn.Conv2d(**kwargs)

"""Initializer arguments of the layers (``kernel_init``, ``bias_init``, ``embedding_init``,
``scale_init``): used when given, PyTorch's defaults when not, checked at construction and init."""

from __future__ import annotations

import pytest
import torch

from deepfn import nn, random
from deepfn.nn import initializers as init

# (layer factory taking the init fields, field name -> param name it draws)
LAYERS = {
    "Dense": (lambda **kw: nn.Dense(64, 32, **kw), {"kernel_init": "weight", "bias_init": "bias"}),
    "Conv2d": (lambda **kw: nn.Conv2d(4, 8, 3, **kw), {"kernel_init": "weight", "bias_init": "bias"}),
    "Embedding": (lambda **kw: nn.Embedding(50, 16, **kw), {"embedding_init": "weight"}),
    "LayerNorm": (lambda **kw: nn.LayerNorm((3, 5), **kw), {"scale_init": "weight", "bias_init": "bias"}),
}
CASES = [(layer, field, param) for layer, (_, fields) in LAYERS.items() for field, param in fields.items()]
IDS = [f"{layer}.{field}" for layer, field, _ in CASES]


@pytest.mark.parametrize(("layer", "field", "param"), CASES, ids=IDS)
def test_the_initializer_is_used(layer, field, param):
    make = LAYERS[layer][0]
    default, _ = make().init(random.key(0))
    zeroed, _ = make(**{field: init.zeros}).init(random.key(0))
    filled, _ = make(**{field: init.ones}).init(random.key(0))
    assert torch.equal(zeroed[param], torch.zeros_like(default[param]))
    assert torch.equal(filled[param], torch.ones_like(default[param]))
    for other in set(default) - {param}:                # the other params keep their defaults
        assert torch.equal(zeroed[other], default[other]), other


@pytest.mark.parametrize(("layer", "field", "param"), CASES, ids=IDS)
def test_none_is_the_default(layer, field, param):
    make = LAYERS[layer][0]
    a, _ = make().init(random.key(3))
    b, _ = make(**{field: None}).init(random.key(3))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_normal_has_its_std_on_a_large_layer():
    params, _ = nn.Dense(1024, 1024, kernel_init=init.normal(0.02)).init(random.key(1))
    assert abs(params["weight"].std().item() - 0.02) < 0.0005
    assert abs(params["weight"].mean().item()) < 0.0005
    emb, _ = nn.Embedding(4096, 256, embedding_init=init.normal(0.02)).init(random.key(2))
    assert abs(emb["weight"].std().item() - 0.02) < 0.0005


def test_names_are_looked_up():
    a, _ = nn.Dense(40, 30, kernel_init="xavier").init(random.key(4))
    bound = (6 / (40 + 30)) ** 0.5
    assert a["weight"].abs().max() <= bound and a["weight"].abs().max() > 0.9 * bound


def test_a_string_initializer_gives_the_callables_draw():
    by_name, _ = nn.Conv2d(4, 8, 3, kernel_init="he").init(random.key(5))
    by_fn, _ = nn.Conv2d(4, 8, 3, kernel_init=init.BY_NAME["he"]).init(random.key(5))
    assert torch.equal(by_name["weight"], by_fn["weight"])


def test_padding_row_stays_zero_under_a_custom_initializer():
    params, _ = nn.Embedding(10, 4, padding_idx=2, embedding_init=init.ones).init(random.key(0))
    assert torch.equal(params["weight"][2], torch.zeros(4))
    assert torch.equal(params["weight"][3], torch.ones(4))


def test_initializer_receives_key_shape_and_float32():
    seen = []

    def spy(key, shape, dtype):
        seen.append((tuple(key.shape), shape, dtype))
        return torch.zeros(shape, dtype=dtype)

    nn.Dense(3, 2, kernel_init=spy, bias_init=spy).init(random.key(0))
    assert seen == [((2,), (2, 3), torch.float32), ((2,), (2,), torch.float32)]


def test_blocks_stay_hashable_and_compare_by_initializer():
    a = nn.Dense(3, 2, kernel_init=init.zeros)
    assert hash(a) == hash(nn.Dense(3, 2, kernel_init=init.zeros))
    assert a == nn.Dense(3, 2, kernel_init=init.zeros)
    assert a != nn.Dense(3, 2)
    assert {a, nn.Dense(3, 2)} == {nn.Dense(3, 2), a}
    assert repr(a) == "Dense(in_features=3, out_features=2, bias=True)"


def test_compiled_apply_with_a_custom_initializer():
    layer = nn.LayerNorm(8, scale_init=init.normal(0.5, mean=1.0))
    params, state = layer.init(random.key(0))
    x = torch.randn(2, 8)
    eager, _ = layer.apply(params, state, x)
    compiled, _ = torch.compile(layer.apply, fullgraph=True)(params, state, x)
    torch.testing.assert_close(compiled, eager)


# --- bad input: one test per rejected value -------------------------------------------------

@pytest.mark.parametrize(("layer", "field", "param"), CASES, ids=IDS)
def test_rejects_a_non_callable(layer, field, param):
    with pytest.raises(TypeError, match=rf"{layer}: {field} must be None, a callable .*; got int 3"):
        LAYERS[layer][0](**{field: 3})


@pytest.mark.parametrize(("layer", "field", "param"), CASES, ids=IDS)
def test_rejects_an_unknown_name(layer, field, param):
    with pytest.raises(ValueError, match=rf"{layer}: {field} must be .* one of \[.*'xavier'.*\]; got 'orthogonal'"):
        LAYERS[layer][0](**{field: "orthogonal"})


@pytest.mark.parametrize(("layer", "field", "param"), CASES, ids=IDS)
def test_rejects_a_wrong_shape_at_init(layer, field, param):
    block = LAYERS[layer][0](**{field: lambda key, shape, dtype: torch.zeros(7, dtype=dtype)})
    with pytest.raises(ValueError, match=rf"{layer}\(.*\)\.init: {field} must return shape \[.*\]; got float32 \[7\]"):
        block.init(random.key(0))


@pytest.mark.parametrize(("layer", "field", "param"), CASES, ids=IDS)
def test_rejects_a_wrong_dtype_at_init(layer, field, param):
    block = LAYERS[layer][0](**{field: lambda key, shape, dtype: torch.zeros(shape, dtype=torch.float64)})
    with pytest.raises(TypeError, match=rf"{layer}\(.*\)\.init: {field} must return a float32 tensor .*; got float64"):
        block.init(random.key(0))


def test_rejects_a_non_tensor_at_init():
    block = nn.Dense(3, 2, bias_init=lambda key, shape, dtype: [0.0, 0.0])
    with pytest.raises(TypeError, match=r"Dense\(.*\)\.init: bias_init must return a float32 tensor of shape \[2\]; got list"):
        block.init(random.key(0))


def test_rejects_a_tensor_on_another_device_at_init():
    block = nn.Dense(3, 2, kernel_init=lambda key, shape, dtype: torch.zeros(shape, dtype=dtype, device="meta"))
    with pytest.raises(ValueError, match=r"Dense\(.*\)\.init: kernel_init must return a tensor on the key's device \(cpu\); got one on meta"):
        block.init(random.key(0))

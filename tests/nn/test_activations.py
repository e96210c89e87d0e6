"""Activation registry: built-ins equal torch's functions, custom registration, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deepfn import random
from deepfn.nn import activations
from tests.utils import TOL, assert_trees_close

REFERENCE = {
    "relu": torch.nn.ReLU(),
    "leaky_relu": torch.nn.LeakyReLU(0.01),
    "tanh": torch.nn.Tanh(),
    "sigmoid": torch.nn.Sigmoid(),
    "gelu": torch.nn.GELU(),
    "gelu_tanh": torch.nn.GELU(approximate="tanh"),
    "silu": torch.nn.SiLU(),
    "elu": torch.nn.ELU(),
    "softplus": torch.nn.Softplus(),
    "mish": torch.nn.Mish(),
    "identity": torch.nn.Identity(),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_builtin_equals_torch_module(name, dtype):
    x = 3 * random.normal(random.key(0), (4, 5), dtype)
    fn = activations.get(name)
    assert_trees_close(fn(x), REFERENCE[name](x), rtol=0, atol=0)
    g = torch.func.grad(lambda x: fn(x).sum())(x)
    xt = x.clone().requires_grad_()
    REFERENCE[name](xt).sum().backward()
    assert_trees_close(g, xt.grad, **TOL[dtype])     # functorch vs autograd kernels: ulp-level


def test_every_registered_name_works_and_builtins_are_listed():
    assert set(REFERENCE) <= set(activations.names())
    x = torch.linspace(-3, 3, 11)
    for name in activations.names():
        y = activations.get(name)(x)
        assert y.shape == x.shape and bool(torch.isfinite(y).all()), name


def test_every_builtin_compiles_fullgraph():
    x = torch.linspace(-2, 2, 5)
    fns = [activations.get(n) for n in sorted(REFERENCE)]
    compiled = torch.compile(lambda x: torch.stack([f(x) for f in fns]), fullgraph=True)
    assert_trees_close(compiled(x), torch.stack([f(x) for f in fns]))


def test_callable_passes_through():
    assert activations.get(F.hardswish) is F.hardswish


def test_register_custom_activation():
    def square_plus(x):
        return x * x + 1

    activations.register("test_square_plus", square_plus)
    assert activations.get("test_square_plus") is square_plus
    assert "test_square_plus" in activations.names()
    activations.register("test_square_plus", square_plus)          # the same function again is harmless
    assert torch.equal(activations.get("test_square_plus")(torch.tensor([2.0])), torch.tensor([5.0]))


def test_unknown_name_lists_the_registered_names():
    with pytest.raises(ValueError, match=r"unknown activation 'relu6'; expected one of \[.*'gelu'.*'relu'.*\] or a callable"):
        activations.get("relu6")


def test_non_string_non_callable_is_refused():
    with pytest.raises(ValueError, match="unknown activation 3"):
        activations.get(3)


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match=r"activations.register: 'relu' is already registered"):
        activations.register("relu", torch.tanh)
    assert activations.get("relu") is F.relu


def test_register_rejects_empty_name():
    with pytest.raises(TypeError, match="activations.register: name must be a non-empty str"):
        activations.register("", torch.tanh)


def test_register_rejects_non_callable():
    with pytest.raises(TypeError, match="activations.register: fn must be callable; got int"):
        activations.register("test_not_callable", 3)

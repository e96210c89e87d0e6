"""Initialisers: statistics match torch.nn.init's formulas on large tensors."""

from __future__ import annotations

import math

import pytest
import torch

from deepfn import nn, random
from deepfn.nn import initializers as init

SHAPE = (256, 128, 3, 3)     # fan_in = 1152, fan_out = 2304


def torch_sample(fill, shape=SHAPE):
    torch.manual_seed(0)
    w = torch.empty(shape)
    fill(w)
    return w


def test_fans_match_torch():
    for shape in [(3, 4), SHAPE, (5, 2, 7)]:
        assert init.fans(shape) == torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))


def test_xavier_uniform_bound_and_std():
    w = init.xavier_uniform()(random.key(0), SHAPE)
    bound = math.sqrt(6.0 / (1152 + 2304))
    assert w.abs().max() <= bound and w.abs().max() > 0.999 * bound
    ref = torch_sample(torch.nn.init.xavier_uniform_)
    assert abs(w.std().item() - ref.std().item()) < 0.01 * ref.std().item()


def test_xavier_normal_std():
    w = init.xavier_normal()(random.key(1), SHAPE)
    assert abs(w.std().item() - math.sqrt(2.0 / (1152 + 2304))) < 0.01 * w.std().item()


def test_kaiming_normal_std_matches_torch():
    w = init.he_normal()(random.key(2), SHAPE)
    ref = torch_sample(lambda t: torch.nn.init.kaiming_normal_(t, mode="fan_in", nonlinearity="relu"))
    expected = math.sqrt(2.0 / 1152)
    assert abs(w.std().item() - expected) < 0.01 * expected
    assert abs(ref.std().item() - expected) < 0.01 * expected
    assert abs(w.mean().item()) < 0.01 * expected


def test_kaiming_uniform_bound_matches_torch():
    w = init.he_uniform()(random.key(3), SHAPE)
    bound = math.sqrt(2.0) * math.sqrt(3.0 / 1152)
    ref = torch_sample(lambda t: torch.nn.init.kaiming_uniform_(t, nonlinearity="relu"))
    assert w.abs().max() <= bound and ref.abs().max() <= bound
    assert w.abs().max() > 0.999 * bound


def test_normal_002():
    w = init.normal(0.02)(random.key(4), SHAPE)
    assert abs(w.std().item() - 0.02) < 0.01 * 0.02 and abs(w.mean().item()) < 1e-3
    assert init.get("normal")(random.key(4), SHAPE).equal(w)


@pytest.mark.parametrize("shape, twin", [((300, 200), lambda: torch.nn.Linear(200, 300)),
                                         ((64, 32, 3, 3), lambda: torch.nn.Conv2d(32, 64, 3))])
def test_torch_default_bounds(shape, twin):
    w = init.torch_default(random.key(5), shape)
    torch.manual_seed(0)
    module = twin()
    bound = 1.0 / math.sqrt(init.fans(shape)[0])
    assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
    assert module.weight.abs().max() <= bound
    assert abs(w.std().item() - module.weight.std().item()) < 0.03 * bound
    b = init.torch_default_bias(init.fans(shape)[0])(random.key(6), (shape[0],))
    assert b.abs().max() <= bound and module.bias.abs().max() <= bound


def test_dtypes_devices_and_keys():
    key = random.key(7)
    for name, fn in init.BY_NAME.items():
        w64 = fn(key, (8, 4), torch.float64)
        assert w64.dtype == torch.float64 and w64.device == key.device, name
        assert torch.equal(fn(key, (8, 4), torch.float64), w64), name
        assert not torch.equal(fn(random.key(8), (8, 4), torch.float64), w64), name
    assert torch.equal(init.zeros(key, (2, 3)), torch.zeros(2, 3))
    assert torch.equal(init.ones(key, (2,), torch.float64), torch.ones(2, dtype=torch.float64))


def test_get_passes_callables_and_names_seed_initialisers():
    assert init.get(init.torch_default) is init.torch_default
    assert {"xavier", "he", "normal"} <= set(init.BY_NAME)


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown weight_init 'orthogonal'; expected one of \[.*'he'.*'xavier'.*\] or a callable"):
        init.get("orthogonal")


def test_fans_rejects_vectors():
    with pytest.raises(ValueError, match=r"initializers.fans: need a weight of at least 2 dims; got shape \[5\]"):
        init.fans((5,))


def test_layers_use_them():
    params, _ = nn.Dense(1152, 64).init(random.key(9))
    assert params["weight"].abs().max() <= 1 / math.sqrt(1152)

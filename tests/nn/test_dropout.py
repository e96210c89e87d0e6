"""Dropout: key-driven masks, rates, scaling, identity in eval, transforms, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from deepfn import nn, random, tree
from tests.utils import assert_trees_close


def drop(rate, x, key, train=True):
    block = nn.Dropout(rate)
    params, state = block.init(random.key(0))
    assert params == {} and state == {}
    return block.apply(params, state, x, key=key, train=train)[0]


def test_same_key_same_mask_different_keys_different_masks():
    x = torch.ones(64, 64)
    a, b = drop(0.5, x, random.key(1)), drop(0.5, x, random.key(1))
    assert torch.equal(a, b)
    c = drop(0.5, x, random.key(2))
    assert not torch.equal(a == 0, c == 0)
    assert 0.4 < ((a == 0) != (c == 0)).float().mean() < 0.6     # independent masks disagree half the time


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_rate_and_scaling(rate):
    x = torch.full((200, 500), 3.0)
    y = drop(rate, x, random.key(7))
    zero = (y == 0).float().mean().item()
    assert abs(zero - rate) < 4 * (rate * (1 - rate) / x.numel()) ** 0.5 + 1e-3
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 3.0 / (1 - rate)))
    assert abs(y.mean().item() - 3.0) < 0.05 * 3.0                 # inverted dropout keeps the mean


def test_eval_and_zero_rate_are_identity():
    x = random.normal(random.key(0), (4, 5))
    assert drop(0.5, x, None, train=False) is x
    assert drop(0.5, x, random.key(1), train=False) is x
    assert torch.equal(drop(0.0, x, random.key(1)), x)


def test_gradient_is_the_mask_scaled():
    x = random.normal(random.key(0), (10, 10), torch.float64)
    key = random.key(3)
    g = torch.func.grad(lambda x: drop(0.25, x, key).sum())(x)
    y = drop(0.25, x, key)
    assert_trees_close(g, torch.where(y != 0, torch.tensor(1 / 0.75, dtype=torch.float64), 0.0), rtol=1e-12, atol=0)


def test_preserves_dtype_and_device():
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        y = drop(0.5, torch.ones(8, 8, dtype=dtype), random.key(0))
        assert y.dtype == dtype and y.device == torch.device("cpu")
        assert set(y.unique().tolist()) <= {0.0, 2.0}


def test_vmap_over_keys_gives_independent_masks():
    x = torch.ones(32, 32)
    keys = random.split(random.key(5), 3)
    ys = torch.func.vmap(lambda k: drop(0.5, x, k))(keys)
    for i in range(3):
        assert torch.equal(ys[i], drop(0.5, x, keys[i]))
    assert not torch.equal(ys[0], ys[1])
    shared = torch.func.vmap(lambda r: drop(0.5, r, keys[0]))(x)     # one key: the same mask per row
    assert torch.equal(shared[0] == 0, shared[1] == 0)


def test_compile_fullgraph_equals_eager():
    x = torch.ones(4, 4)
    compiled = torch.compile(lambda x, k: drop(0.5, x, k), fullgraph=True)
    key = random.key(11)
    assert torch.equal(compiled(x, key), drop(0.5, x, key))


def test_apply_is_pure():
    x = random.normal(random.key(0), (4, 4))
    key = random.key(1)
    before = [(t.clone(), t._version) for t in (x, key)]
    rng = torch.random.get_rng_state()
    drop(0.5, x, key)
    assert torch.equal(torch.random.get_rng_state(), rng)
    for t, (value, version) in zip((x, key), before, strict=True):
        assert torch.equal(t, value) and t._version == version


@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), rate=st.floats(0.0, 0.95), seed=st.integers(0, 2**32))
def test_output_shape_and_values(shape, rate, seed):
    x = torch.ones(shape)
    y = drop(rate, x, random.key(seed))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert bool(((y == 0) | torch.isclose(y, torch.tensor(1 / (1 - rate)))).all())


def test_missing_key_in_training_raises():
    with pytest.raises(ValueError, match=r"Dropout\(rate=0.5\)\.apply: train=True needs a random key for dropout; pass key="):
        drop(0.5, torch.ones(3), None)


def test_float_key_raises():
    with pytest.raises(TypeError, match=r"Dropout\(rate=0.5\)\.apply: key must be an int64 tensor \[2\]"):
        drop(0.5, torch.ones(3), torch.zeros(2))


def test_non_tensor_input_raises():
    with pytest.raises(TypeError, match=r"Dropout\(rate=0.5\)\.apply: x must be a torch.Tensor; got list"):
        drop(0.5, [1.0, 2.0], random.key(0))


@pytest.mark.parametrize("rate", [1.0, -0.1, "0.5", True])
def test_rejects_bad_rate(rate):
    with pytest.raises(ValueError, match=r"Dropout: rate must be a float in \[0, 1\)"):
        nn.Dropout(rate)


def test_functional_dropout_matches_block():
    x = random.normal(random.key(0), (3, 3))
    assert_trees_close(nn.dropout(x, 0.3, random.key(4), True), drop(0.3, x, random.key(4)), rtol=0, atol=0)
    assert tree.leaves(nn.Dropout(0.3).init(random.key(0))) == []

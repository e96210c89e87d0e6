"""PositionalEncoding: the seed's sinusoidal table, config-only, added to [B, T, d_model]."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from deepfn import nn, random
from tests.utils import assert_trees_close


def seed_table(max_len: int, d_model: int) -> torch.Tensor:
    """The seed's buffer, written the seed's way (slice assignment, float32), d_model even."""
    pe = torch.zeros(max_len, d_model)
    position = torch.arange(0, max_len, dtype=torch.float).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


def test_float32_adds_the_seed_table_bit_for_bit(getkey):
    block = nn.PositionalEncoding(16, max_len=300)
    params, state = block.init(getkey())
    assert params == {} and state == {}
    x = random.normal(getkey(), (2, 300, 16))
    y, _ = block.apply(params, state, x)
    assert torch.equal(y, x + seed_table(300, 16))


@pytest.mark.parametrize("d_model", [6, 7])
def test_float64_table_follows_the_formula(d_model):
    table = nn.PositionalEncoding(d_model).table(50, dtype=torch.float64)
    for t in (0, 1, 17, 49):
        for j in range(d_model):
            angle = t * math.exp(-(j - j % 2) * math.log(10000.0) / d_model)
            expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
            assert abs(table[t, j].item() - expected) < 1e-12


def test_output_follows_input_dtype_and_grad_is_identity(getkey):
    block = nn.PositionalEncoding(8)
    x = random.normal(getkey(), (2, 5, 8))
    y16, _ = block.apply({}, {}, x.to(torch.bfloat16))
    assert y16.dtype == torch.bfloat16
    assert_trees_close(y16, (x + block.table(5)).to(torch.bfloat16), rtol=1e-2, atol=1e-2)
    g = torch.func.grad(lambda x: block.apply({}, {}, x)[0].sum())(x.double())
    assert torch.equal(g, torch.ones_like(g))


def test_max_len_positions_are_allowed():
    block = nn.PositionalEncoding(4, max_len=6)
    assert block.apply({}, {}, torch.zeros(1, 6, 4))[0].shape == (1, 6, 4)


def test_vmap_over_batch_equals_batched_call(getkey):
    block = nn.PositionalEncoding(6)
    x = random.normal(getkey(), (3, 4, 6))
    per_seq = torch.func.vmap(lambda s: block.apply({}, {}, s)[0])(x)
    assert_trees_close(per_seq, block.apply({}, {}, x)[0], rtol=0, atol=0)


def test_compile_fullgraph_equals_eager(getkey):
    block = nn.PositionalEncoding(4)
    x = random.normal(getkey(), (1, 3, 4))
    compiled = torch.compile(lambda x: block.apply({}, {}, x)[0], fullgraph=True)
    assert_trees_close(compiled(x), block.apply({}, {}, x)[0])


def test_apply_is_pure(getkey):
    x = random.normal(getkey(), (2, 3, 4))
    before, version = x.clone(), x._version
    state = {}
    _, out_state = nn.PositionalEncoding(4).apply({}, state, x, train=True)
    assert out_state is state and torch.equal(x, before) and x._version == version


@given(batch=st.integers(1, 3), length=st.integers(0, 6), d_model=st.integers(1, 7))
def test_output_shape(batch, length, d_model):
    x = torch.zeros(batch, length, d_model)
    y, _ = nn.PositionalEncoding(d_model, max_len=6).apply({}, {}, x)
    assert y.shape == x.shape and y.dtype == x.dtype
    if length:
        assert torch.equal(y[:, 0, 1::2], torch.ones_like(y[:, 0, 1::2]))     # cos(0) on odd columns


def test_rejects_sequences_longer_than_max_len():
    with pytest.raises(ValueError, match=r"PositionalEncoding\(d_model=4, max_len=5\)\.apply: x has 6 positions, more than max_len=5"):
        nn.PositionalEncoding(4, max_len=5).apply({}, {}, torch.zeros(2, 6, 4))


def test_rejects_wrong_model_width():
    with pytest.raises(ValueError, match=r"PositionalEncoding\(.*\)\.apply: x must have size 4 \(d_model\) in axis -1; got float32 \[2, 3, 5\]"):
        nn.PositionalEncoding(4).apply({}, {}, torch.zeros(2, 3, 5))


def test_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"PositionalEncoding\(.*\)\.apply: x must be 2-d or 3-d .*got float32 \[1, 2, 3, 4\]"):
        nn.PositionalEncoding(4).apply({}, {}, torch.zeros(1, 2, 3, 4))


def test_rejects_token_ids():
    with pytest.raises(TypeError, match=r"PositionalEncoding\(.*\)\.apply: x must be floating point; got int64"):
        nn.PositionalEncoding(4).apply({}, {}, torch.zeros(2, 3, 4, dtype=torch.int64))


@pytest.mark.parametrize("kwargs, match", [
    (dict(d_model=0), "d_model must be a positive int"),
    (dict(d_model=4, max_len=0), "max_len must be a positive int"),
])
def test_rejects_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nn.PositionalEncoding(**kwargs)

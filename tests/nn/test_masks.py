"""Boolean attention masks: shapes, values, combination, and rejected inputs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from deepfn import nn
from deepfn.nn.masks import check_mask


def test_padding_mask_marks_non_pad_keys():
    tokens = torch.tensor([[5, 6, 0, 0], [0, 7, 8, 9]])
    m = nn.padding_mask(tokens, 0)
    assert m.shape == (2, 1, 1, 4) and m.dtype == torch.bool
    assert m[:, 0, 0].tolist() == [[True, True, False, False], [False, True, True, True]]


@given(st.lists(st.integers(0, 5), min_size=1, max_size=6), st.integers(0, 5))
def test_padding_mask_is_tokens_not_pad(ids, pad):
    tokens = torch.tensor([ids])
    assert torch.equal(nn.padding_mask(tokens, pad)[0, 0, 0], tokens[0] != pad)


def test_causal_mask_is_lower_triangular():
    m = nn.causal_mask(4)
    assert m.shape == (1, 1, 4, 4) and m.dtype == torch.bool
    i, j = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    assert torch.equal(m[0, 0], j <= i)


def test_causal_mask_device():
    assert nn.causal_mask(3, device="cpu").device.type == "cpu"
    assert nn.causal_mask(3, device="meta").device.type == "meta"


def test_causal_mask_compiles():
    fn = torch.compile(lambda x: nn.causal_mask(x.shape[1], device=x.device), fullgraph=True)
    assert torch.equal(fn(torch.zeros(1, 3)), nn.causal_mask(3))


def test_combine_is_logical_and_with_broadcasting():
    pad = nn.padding_mask(torch.tensor([[1, 2, 0]]), 0)
    m = nn.combine(pad, nn.causal_mask(3))
    assert m.shape == (1, 1, 3, 3)
    assert m[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, False]]


def test_combine_skips_none():
    c = nn.causal_mask(2)
    assert nn.combine(None, c, None) is c
    assert nn.combine() is None and nn.combine(None) is None


def test_check_mask_accepts_broadcastable():
    check_mask("f", "mask", torch.ones(3, 4, dtype=torch.bool), (2, 8, 3, 4))
    check_mask("f", "mask", torch.ones(2, 1, 1, 4, dtype=torch.bool), (2, 8, 3, 4))


# -- rejected inputs -------------------------------------------------------------------

def test_padding_mask_rejects_float_tokens():
    with pytest.raises(TypeError, match=r"padding_mask: tokens must be an integer tensor.*float32 \[2, 3\]"):
        nn.padding_mask(torch.zeros(2, 3), 0)


def test_padding_mask_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"padding_mask: tokens must be 2-d \[B, T\]; got int64 \[3\]"):
        nn.padding_mask(torch.zeros(3, dtype=torch.int64), 0)


def test_padding_mask_rejects_non_int_pad_id():
    with pytest.raises(TypeError, match="padding_mask: pad_id must be an int; got float 0.0"):
        nn.padding_mask(torch.zeros(2, 3, dtype=torch.int64), 0.0)


@pytest.mark.parametrize("length", [0, -1, 2.0, True])
def test_causal_mask_rejects_bad_length(length):
    with pytest.raises(ValueError, match="causal_mask: length must be a positive int"):
        nn.causal_mask(length)


def test_combine_rejects_float_mask():
    with pytest.raises(TypeError, match=r"combine: mask 1 must be a bool tensor.*float32 \[2, 2\]"):
        nn.combine(nn.causal_mask(2), torch.ones(2, 2))


def test_check_mask_rejects_float_and_explains():
    with pytest.raises(TypeError, match=r"f: mask must be bool .*ambiguous \(additive 0/-inf vs multiplicative 1/0\)"):
        check_mask("f", "mask", torch.zeros(3, 4), (2, 8, 3, 4))


def test_check_mask_rejects_unbroadcastable():
    with pytest.raises(ValueError, match=r"f: mask must be bool and broadcastable to \[2, 8, 3, 4\].*got bool \[2, 4\]"):
        check_mask("f", "mask", torch.ones(2, 4, dtype=torch.bool), (2, 8, 3, 4))


def test_check_mask_rejects_too_many_dims():
    with pytest.raises(ValueError, match=r"broadcastable to \[2, 8, 3, 4\].*got bool \[1, 1, 1, 3, 4\]"):
        check_mask("f", "mask", torch.ones(1, 1, 1, 3, 4, dtype=torch.bool), (2, 8, 3, 4))


def test_check_mask_rejects_non_tensor():
    with pytest.raises(TypeError, match="f: mask must be a bool tensor"):
        check_mask("f", "mask", [[True]], (1, 1, 1, 1))

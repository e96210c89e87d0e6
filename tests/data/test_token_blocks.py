"""deepfn.data.next_token_blocks: contiguous (inputs, next-token labels) rows of a token stream."""

from __future__ import annotations

import pytest
import torch

from deepfn.data import next_token_blocks


@pytest.mark.parametrize("length", [5, 9, 10, 11, 23])
@pytest.mark.parametrize("block_size", [1, 3, 4])
def test_rows_are_the_stream_shifted_by_one(length, block_size):
    ids = torch.randint(0, 50, (length,))
    if length < block_size + 1:
        return
    x, y = next_token_blocks(ids, block_size)
    n = (length - 1) // block_size
    assert x.shape == y.shape == (n, block_size) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x.flatten(), ids[:n * block_size])
    assert torch.equal(y.flatten(), ids[1:n * block_size + 1])


@pytest.mark.parametrize("length", [2, 5, 9, 10, 11, 23])
@pytest.mark.parametrize("block_size", [1, 3, 4])
def test_pad_last_gives_every_prediction_exactly_once(length, block_size):
    ids = torch.arange(100, 100 + length)
    x, y = next_token_blocks(ids, block_size, pad_last=True, pad_id=7, ignore_index=-5)
    counted = y != -5
    assert int(counted.sum()) == length - 1
    assert torch.equal(y[counted], ids[1:])
    assert torch.equal(x[counted], ids[:-1])     # each label's input is the token before it
    assert bool((x[~counted] == 7).all())
    assert x.shape[0] == -(-(length - 1) // block_size)


def test_does_not_change_its_input():
    ids = torch.arange(10)
    x, _ = next_token_blocks(ids, 3, pad_last=True)
    x.fill_(0)
    assert torch.equal(ids, torch.arange(10))


def test_rejects_a_stream_too_short_for_one_block():
    with pytest.raises(ValueError, match=r"next_token_blocks: ids must hold at least 5 tokens .*block_size=4.*got 4"):
        next_token_blocks(torch.arange(4), 4)


def test_rejects_a_single_token_with_pad_last():
    with pytest.raises(ValueError, match=r"at least 2 tokens .*pad_last=True.*got 1"):
        next_token_blocks(torch.arange(1), 4, pad_last=True)


def test_rejects_float_ids():
    with pytest.raises(TypeError, match=r"next_token_blocks: ids must be a 1-d integer tensor"):
        next_token_blocks(torch.ones(10), 3)


def test_rejects_2d_ids():
    with pytest.raises(TypeError, match=r"next_token_blocks: ids must be a 1-d integer tensor"):
        next_token_blocks(torch.ones(2, 10, dtype=torch.int64), 3)


@pytest.mark.parametrize("block_size", [0, -1, 2.0, True])
def test_rejects_a_bad_block_size(block_size):
    with pytest.raises(ValueError, match=r"next_token_blocks: block_size must be a positive int"):
        next_token_blocks(torch.arange(10), block_size)

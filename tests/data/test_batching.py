"""deepfn.data.batches: order, sizes, keyed shuffling and argument checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from deepfn import random
from deepfn.data import batches


def _data(n):
    return torch.arange(n * 2).reshape(n, 2).float(), torch.arange(n)


def test_in_order_without_key():
    x, y = _data(7)
    out = list(batches((x, y), 3))
    assert [b[1].tolist() for b in out] == [[0, 1, 2], [3, 4, 5], [6]]
    assert all(isinstance(b, tuple) and len(b) == 2 for b in out)
    assert torch.equal(out[1][0], x[3:6])


def test_drop_last():
    x, y = _data(7)
    assert [b[1].tolist() for b in batches((x, y), 3, drop_last=True)] == [[0, 1, 2], [3, 4, 5]]
    assert [len(b[1]) for b in batches((x, y), 7, drop_last=True)] == [7]
    assert list(batches((x, y), 8, drop_last=True)) == []


def test_keyed_order_is_the_permutation():
    x, y = _data(10)
    k = random.key(3)
    order = random.permutation(k, 10)
    got = torch.cat([b[1] for b in batches((x, y), 4, key=k)])
    assert torch.equal(got, order)
    first = next(iter(batches((x, y), 4, key=k)))
    assert torch.equal(first[0], x[order[:4]])
    again = torch.cat([b[1] for b in batches((x, y), 4, key=k)])
    assert torch.equal(got, again)
    other = torch.cat([b[1] for b in batches((x, y), 4, key=random.key(4))])
    assert not torch.equal(got, other)


def test_single_tensor_tuple_and_list():
    x, _ = _data(4)
    assert [b[0].shape[0] for b in batches([x], 3)] == [3, 1]


@given(n=st.integers(0, 30), batch_size=st.integers(1, 8), seed=st.integers(0, 100),
       drop_last=st.booleans(), keyed=st.booleans())
def test_property_every_row_once(n, batch_size, seed, drop_last, keyed):
    x, y = _data(n)
    key = random.key(seed) if keyed else None
    out = list(batches((x, y), batch_size, key=key, drop_last=drop_last))
    sizes = [len(b[1]) for b in out]
    assert all(s == batch_size for s in sizes[:-1])
    if drop_last:
        assert sum(sizes) == n - n % batch_size and all(s == batch_size for s in sizes)
    else:
        seen = torch.cat([b[1] for b in out]) if out else torch.zeros(0, dtype=torch.int64)
        assert torch.equal(seen.sort().values, torch.arange(n))
    for bx, by in out:
        assert torch.equal(bx, x[by])      # rows stay aligned across tensors


@pytest.mark.parametrize("args, kwargs, exc, match", [
    ((torch.ones(3), 2), {}, TypeError, r"deepfn\.data\.batches: data must be a tuple of tensors"),
    (((), 2), {}, ValueError, r"data must hold at least one tensor"),
    (((torch.ones(3), [1, 2, 3]), 2), {}, TypeError, r"data\[1\] must be a tensor with a leading axis; got list"),
    (((torch.ones(3), torch.ones(4)), 2), {}, ValueError, r"same leading size; got float32 \[3\], float32 \[4\]"),
    (((torch.ones(3),), 0), {}, ValueError, r"batch_size must be a positive int; got 0"),
    (((torch.ones(3),), 2.0), {}, ValueError, r"batch_size must be a positive int; got 2\.0"),
    (((torch.ones(3),), 2), {"key": 3}, TypeError, r"key must be None or an int64 tensor \[2\]"),
], ids=["tensor", "empty", "not-tensor", "sizes", "zero-batch", "float-batch", "bad-key"])
def test_bad_arguments_raise_at_call(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        batches(*args, **kwargs)          # no next(): checked eagerly

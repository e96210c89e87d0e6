"""Length bucketing: a permutation of the rows whose batches hold similar lengths."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from deepfn import random
from deepfn.data import bucket_by_length


def _lengths(n, seed=0):
    return torch.randint(1, 60, (n,), generator=torch.Generator().manual_seed(seed))


@given(n=st.integers(0, 200), batch_size=st.integers(1, 17), window=st.integers(1, 5), seed=st.integers(0, 99))
def test_every_row_once_and_leftovers_last(n, batch_size, window, seed):
    lengths = _lengths(n, seed)
    rows = random.permutation(random.key(seed), n)
    out = bucket_by_length(lengths, batch_size, window=window)(random.key(seed + 1), rows)
    assert out.dtype == torch.int64 and sorted(out.tolist()) == list(range(n))
    full = n // batch_size * batch_size
    # The leftover rows are the tail of the last sorted window, in length order.
    tail = lengths[out[full:]]
    assert torch.equal(tail, tail.sort().values)


@given(n=st.integers(1, 150), batch_size=st.integers(1, 9), seed=st.integers(0, 99))
def test_one_window_gives_batches_of_disjoint_length_ranges(n, batch_size, seed):
    lengths = _lengths(n, seed)
    order = bucket_by_length(lengths, batch_size, window=n)   # the whole epoch is one window
    out = order(random.key(seed), random.permutation(random.key(0), n))
    full = n // batch_size
    spans = sorted((int(b.min()), int(b.max())) for b in lengths[out[:full * batch_size]].reshape(full, batch_size))
    assert all(hi <= lo_next for (_, hi), (lo_next, _) in zip(spans, spans[1:], strict=False))


def test_bucketing_cuts_padding():
    lengths, bs = _lengths(6400), 64
    rows = random.permutation(random.key(0), 6400)

    def padded(order):
        return sum(int(lengths[b].max()) * bs for b in order.reshape(-1, bs))

    bucketed = bucket_by_length(lengths, bs)(random.key(1), rows)
    assert padded(bucketed) < 0.6 * padded(rows)


def test_key_decides_the_batch_order():
    lengths, rows = _lengths(100), torch.arange(100)
    order = bucket_by_length(lengths, 10, window=10)
    a, b, c = (order(random.key(k), rows) for k in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("lengths, kw, err, match", [
    (torch.ones(4), {}, TypeError, "1-D integer tensor"),
    (torch.ones(2, 2, dtype=torch.int64), {}, TypeError, "1-D integer tensor"),
    ([1, 2], {}, TypeError, "1-D integer tensor"),
    (torch.ones(4, dtype=torch.int64), dict(batch_size=0), ValueError, "batch_size must be a positive int"),
    (torch.ones(4, dtype=torch.int64), dict(window=0), ValueError, "window must be a positive int"),
])
def test_bad_arguments(lengths, kw, err, match):
    with pytest.raises(err, match=match):
        bucket_by_length(lengths, **{"batch_size": 2, **kw})


def test_rows_out_of_range():
    order = bucket_by_length(torch.ones(4, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="indices into the 4 lengths"):
        order(random.key(0), torch.tensor([0, 4]))

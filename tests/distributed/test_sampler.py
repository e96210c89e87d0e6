"""shard_indices: DistributedSampler's semantics as a pure function of a key."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data.distributed import DistributedSampler

from deepfn import random
from deepfn.distributed import shard_indices, shard_size


def shards(key, epoch, n, world, **kw):
    return [shard_indices(key, epoch, n, r, world, **kw) for r in range(world)]


@given(seed=st.integers(0, 2**31 - 1), per_rank=st.integers(1, 20), world=st.integers(1, 6),
       epoch=st.integers(0, 50))
def test_ranks_cover_the_data_exactly_once_per_epoch(seed, per_rank, world, epoch):
    n = per_rank * world
    parts = shards(random.key(seed), epoch, n, world)
    assert all(p.dtype == torch.int64 and p.shape == (per_rank,) for p in parts)
    assert torch.equal(torch.cat(parts).sort().values, torch.arange(n))


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 60), world=st.integers(1, 7),
       drop_last=st.booleans())
def test_every_rank_gets_the_same_number_of_valid_indices(seed, n, world, drop_last):
    parts = shards(random.key(seed), 0, n, world, drop_last=drop_last)
    want = shard_size(n, world, drop_last)
    assert all(p.shape == (want,) for p in parts)
    allidx = torch.cat(parts)
    assert bool(((allidx >= 0) & (allidx < n)).all())
    if not drop_last:       # padding only repeats: every example is still read
        assert set(allidx.tolist()) == set(range(n))
    else:                   # nothing is read twice
        assert len(set(allidx.tolist())) == allidx.numel()


@pytest.mark.parametrize("n, world", [(10, 3), (12, 4), (2, 5), (7, 2), (1, 3)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_unshuffled_indices_equal_torch_distributed_sampler(n, world, drop_last):
    for r in range(world):
        twin = DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=False, drop_last=drop_last)
        ours = shard_indices(random.key(0), 0, n, r, world, shuffle=False, drop_last=drop_last)
        assert ours.tolist() == list(twin)
        assert len(twin) == shard_size(n, world, drop_last)


def test_shuffle_is_a_pure_function_of_key_and_epoch():
    k = random.key(4)
    a, b = shard_indices(k, 3, 100, 1, 2), shard_indices(k, 3, 100, 1, 2)
    assert torch.equal(a, b)
    assert not torch.equal(a, shard_indices(k, 4, 100, 1, 2))                  # new epoch, new order
    assert not torch.equal(a, shard_indices(random.key(5), 3, 100, 1, 2))      # new key, new order
    assert not torch.equal(a, torch.arange(1, 100, 2))                         # actually shuffled
    rng_state = torch.random.get_rng_state()
    shard_indices(k, 0, 100, 0, 2)
    assert torch.equal(rng_state, torch.random.get_rng_state())


def test_indices_follow_the_keys_device():
    assert shard_indices(random.key(0), 0, 10, 0, 2).device == random.key(0).device


@pytest.mark.parametrize("kwargs, match", [
    (dict(rank=2, world_size=2), r"rank must be an int in \[0, world_size=2\); got 2"),
    (dict(rank=-1, world_size=2), r"rank must be an int in \[0, world_size=2\); got -1"),
    (dict(world_size=0), r"world_size must be an int >= 1; got 0"),
    (dict(n=0), r"n must be an int >= 1; got 0"),
    (dict(n=3.0), r"n must be an int >= 1; got 3.0"),
    (dict(epoch=-1), r"epoch must be an int >= 0; got -1"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    args = dict(key=random.key(0), epoch=0, n=10, rank=0, world_size=2) | kwargs
    with pytest.raises(ValueError, match="deepfn.distributed.shard_indices: " + match):
        shard_indices(**args)


@pytest.mark.parametrize("key, got", [(torch.zeros(2, dtype=torch.int32), r"int32 \[2\]"),
                                      (torch.zeros(3, dtype=torch.int64), r"int64 \[3\]"), (7, "int")])
def test_a_bad_key_raises_type_error(key, got):
    with pytest.raises(TypeError, match=r"shard_indices: key must be an int64 tensor \[2\].*; got " + got):
        shard_indices(key, 0, 10, 0, 2)

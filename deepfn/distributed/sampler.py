"""Which examples each rank reads: ``DistributedSampler`` as a pure function of a key.

Twin: ``torch.utils.data.distributed.DistributedSampler``. Its ``seed + epoch`` generator
becomes ``random.fold_in(key, epoch)``; padding, ``drop_last`` and the strided split
``indices[rank::world_size]`` follow it exactly, so with ``shuffle=False`` the indices
are the sampler's own.
"""

from __future__ import annotations

import math

import torch

from .. import random
from ..typing import Key, Tensor

__all__ = ["shard_indices", "shard_size"]


def _check_int(fn: str, name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{fn}: {name} must be an int >= {low}; got {value!r}")
    return value


def shard_size(n: int, world_size: int, drop_last: bool = False) -> int:
    """How many indices each rank gets from :func:`shard_indices` (the same on every rank)."""
    _check_int("deepfn.distributed.shard_size", "n", n, 0)
    _check_int("deepfn.distributed.shard_size", "world_size", world_size, 1)
    if drop_last and n % world_size:
        return math.ceil((n - world_size) / world_size)
    return math.ceil(n / world_size)


def shard_indices(key: Key, epoch: int, n: int, rank: int, world_size: int, *,
                  shuffle: bool = True, drop_last: bool = False) -> Tensor:
    """The indices of the ``n`` examples that rank ``rank`` reads in ``epoch``.

    With ``shuffle`` one permutation of ``range(n)`` is drawn from
    ``random.fold_in(key, epoch)``, the same on every rank (pass every rank the same key);
    otherwise the order is ``0 .. n-1``. Without ``drop_last`` the order is padded by
    wrapping around to a multiple of ``world_size``, so every rank gets
    ``ceil(n / world_size)`` indices and a few examples are read twice; with ``drop_last``
    the tail is cut instead. Rank ``r`` takes every ``world_size``-th index from ``r``.
    When ``world_size`` divides ``n`` the ranks together read each example exactly once.

    Args:
        key: ``int64 [2]``, from ``deepfn.random.key``.
        epoch: the epoch number; a new epoch gives a new order.
        n: the dataset's size.
        rank: this process's rank, in ``[0, world_size)``.
        world_size: number of ranks.
        shuffle: draw a permutation (``DistributedSampler(shuffle=True)``).
        drop_last: cut the tail instead of padding.

    Returns:
        ``int64 [shard_size(n, world_size, drop_last)]`` on the key's device.

    Raises:
        ValueError: a size, rank or epoch out of range.
        TypeError: ``key`` is not an ``int64 [2]`` key.
    """
    fn = "deepfn.distributed.shard_indices"
    if not isinstance(key, torch.Tensor) or key.dtype != torch.int64 or tuple(key.shape) != (2,):
        got = f"{str(key.dtype).removeprefix('torch.')} {list(key.shape)}" if isinstance(key, torch.Tensor) else type(key).__name__
        raise TypeError(f"{fn}: key must be an int64 tensor [2] from deepfn.random.key; got {got}")
    _check_int(fn, "epoch", epoch, 0)
    _check_int(fn, "n", n, 1)
    _check_int(fn, "world_size", world_size, 1)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"{fn}: rank must be an int in [0, world_size={world_size}); got {rank!r}")
    if shuffle:
        order = random.permutation(random.fold_in(key, epoch), n)
    else:
        order = torch.arange(n, dtype=torch.int64, device=key.device)
    total = shard_size(n, world_size, drop_last) * world_size
    if total > n:
        # DistributedSampler's padding: repeat the order from its start as often as needed.
        order = order.repeat(math.ceil(total / n))
    return order[:total][rank::world_size].contiguous()

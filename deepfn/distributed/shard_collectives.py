"""The collectives of sharded training, over lists of leaves in the layout of
:mod:`~deepfn.distributed.sharded_state` (each leaf flattened, zero-padded to a multiple of
``N`` and cut into ``N`` equal chunks).

- :func:`all_gather_leaves`: the shards of every rank -> whole leaves (``all_gather_single``);
- :func:`reduce_scatter_mean_leaves`: whole gradients of every rank -> this rank's chunk of
  their mean (``reduce_scatter_single``; each gradient multiplied by ``1 / N`` first, DDP's
  order, so the sums equal ``all_reduce_mean``'s);
- :func:`reduce_scatter_mean_whole`: one whole gradient -> this rank's chunk of the mean,
  with no packed copy (the per-unit gatherer's large leaves);
- :func:`all_reduce_sum`: a small vector summed over ranks (norms, flags, metrics).

Leaves travel in buckets of about ``bucket_mb`` MiB, one dtype each
(:func:`~deepfn.distributed.collectives.plan_buckets`): one collective per bucket, not per leaf.
These run eagerly, outside any compiled graph and outside ``torch.func`` transforms: the
sharded step calls them between its compiled pieces (never differentiate through them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from ..typing import Tensor
from .collectives import _bucket_bytes, _raise_collective, plan_buckets
from .process import world_size
from .sharded_state import chunk_size

__all__ = ["all_gather_leaves", "reduce_scatter_mean_leaves", "reduce_scatter_mean_whole", "all_reduce_sum"]


def all_gather_leaves(shards: Sequence[Tensor], shapes: Sequence[tuple[int, ...]],
                      bucket_mb: float = 25.0) -> list[Tensor]:
    """Whole leaves ``[*shape]`` from every rank's chunk ``[ceil(numel / N)]`` of them.

    Args:
        shards: this rank's chunk of each leaf, 1-D.
        shapes: each leaf's whole shape.
        bucket_mb: the size in MiB of each gathered bucket.

    Returns:
        New tensors, one per leaf (each its own memory).

    Raises:
        ValueError: a chunk's length is not ``ceil(numel / N)`` of its shape.
        CollectiveError: a rank died or hung.
    """
    fn = "deepfn.distributed.all_gather_leaves"
    n = world_size()
    numels = [_numel(s) for s in shapes]
    for i, (x, m) in enumerate(zip(shards, numels, strict=True)):
        if x.ndim != 1 or x.numel() != chunk_size(m, n):
            raise ValueError(f"{fn}: leaf {i} must be a 1-D chunk of {chunk_size(m, n)} elements (shape "
                             f"{list(shapes[i])} over {n} ranks); got shape {list(x.shape)}")
    out: list[Tensor] = [x for x in shards]
    for bucket in plan_buckets(shards, _bucket_bytes(fn, bucket_mb), floating_only=False):
        local = torch.cat([shards[i] for i in bucket]) if len(bucket) > 1 else shards[bucket[0]]
        if n == 1:
            gathered = local.reshape(1, -1)
        else:
            gathered = local.new_empty(n * local.numel())
            try:
                dist.all_gather_single(gathered, local.contiguous())
            except RuntimeError as err:
                _raise_collective(fn, err)
            gathered = gathered.view(n, local.numel())
        offset = 0
        for i in bucket:
            c = shards[i].numel()
            # [N, c] columns of this leaf, row-major = the padded flat leaf; reshape copies it out.
            whole = gathered[:, offset:offset + c].reshape(-1)[:numels[i]].reshape(shapes[i])
            out[i] = whole.clone() if n == 1 else whole
            offset += c
    return out


def reduce_scatter_mean_leaves(grads: Sequence[Tensor], bucket_mb: float = 25.0) -> list[Tensor]:
    """This rank's chunk ``[ceil(numel / N)]`` of the mean over ranks of each whole leaf.

    Args:
        grads: whole gradient leaves, the same shapes and dtypes on every rank.
        bucket_mb: the size in MiB of each bucket (of this rank's output).

    Returns:
        New 1-D tensors, one per leaf; the padding's entries are zero.

    Raises:
        CollectiveError: a rank died or hung.
    """
    fn = "deepfn.distributed.reduce_scatter_mean_leaves"
    n = world_size()
    chunks = [chunk_size(g.numel(), n) for g in grads]
    out: list[Tensor] = list(grads)
    # Buckets sized by the chunks each rank keeps: plan over stand-ins of the chunks' size.
    stand_ins = [g.new_empty(1).expand(c) for g, c in zip(grads, chunks, strict=True)]
    for bucket in plan_buckets(stand_ins, _bucket_bytes(fn, bucket_mb), floating_only=False):
        mine = reduce_scatter_mean_flat([grads[i] for i in bucket], [chunks[i] for i in bucket], fn)
        offset = 0
        for i in bucket:
            out[i] = mine[offset:offset + chunks[i]]
            offset += chunks[i]
    return out


def pack_chunks(grads: Sequence[Tensor], chunks: Sequence[int], n: int) -> Tensor:
    """``[n, sum(chunks)]``: row ``j`` holds rank ``j``'s chunk of every leaf of ``grads`` (leaf
    ``i`` flattened, zero-padded to ``n * chunks[i]``), times ``1 / n``: a reduce-scatter's input."""
    full = grads[0].new_zeros(n, sum(chunks))
    offset = 0
    for g, c in zip(grads, chunks, strict=True):
        g = g.reshape(-1)
        padded = torch.cat([g, g.new_zeros(n * c - g.numel())]) if n * c != g.numel() else g
        if n == 1:
            full[:, offset:offset + c] = padded.view(n, c)
        else:
            torch.mul(padded.view(n, c), 1.0 / n, out=full[:, offset:offset + c])
        offset += c
    return full


def reduce_scatter_mean_flat(grads: Sequence[Tensor], chunks: Sequence[int], fn: str) -> Tensor:
    """This rank's chunks, concatenated (1-D, ``sum(chunks)`` long), of the mean over ranks of
    ``grads``: leaf ``i`` flattened, zero-padded to ``N * chunks[i]`` and cut in ``N`` chunks.
    One ``reduce_scatter`` for all the leaves; ``fn`` names the caller in a collective's error."""
    n = world_size()
    full = pack_chunks(grads, chunks, n)
    if n == 1:
        return full[0]
    return _reduce_scatter(full.new_empty(full.shape[1]), full.view(-1), fn)


def reduce_scatter_mean_whole(grad: Tensor, fn: str) -> Tensor:
    """This rank's chunk (1-D, ``grad.numel() // N`` long) of the mean over ranks of ``grad``,
    whose size is a multiple of ``N`` (no padding), reduce-scattered straight from it: no
    packed copy of it is made (the gradient is typically the largest tensor alive). The sum
    over ranks is multiplied by ``1 / N`` after it, not before: for ``N`` a power of two the
    same numbers as :func:`reduce_scatter_mean_flat` (barring underflow), for other ``N``
    within rounding. ``fn`` names the caller in a collective's error.

    Raises:
        ValueError: ``grad``'s size is not a multiple of ``N``.
        CollectiveError: a rank died or hung.
    """
    n = world_size()
    if grad.numel() % n:
        raise ValueError(f"{fn}: a gradient reduce-scattered whole must have a multiple of {n} elements "
                         f"(one chunk per rank); got shape {list(grad.shape)}")
    if n == 1:
        return grad.reshape(-1)
    return _reduce_scatter(grad.new_empty(grad.numel() // n), grad.reshape(-1), fn).mul_(1.0 / n)


def _reduce_scatter(mine: Tensor, flat: Tensor, fn: str) -> Tensor:
    """``mine`` filled with this rank's chunk of ``flat`` summed over ranks; a failed
    collective raised as deepfn's error naming ``fn``."""
    try:
        dist.reduce_scatter_single(mine, flat)
    except RuntimeError as err:
        _raise_collective(fn, err)
    return mine


def all_reduce_sum(values: Tensor) -> Tensor:
    """``values`` summed over ranks (a new tensor); itself with a world of one."""
    if world_size() == 1:
        return values
    total = values.clone()
    try:
        dist.all_reduce(total)
    except RuntimeError as err:
        _raise_collective("deepfn.distributed.all_reduce_sum", err)
    return total


def _numel(shape: Sequence[int]) -> int:
    m = 1
    for s in shape:
        m *= int(s)
    return m

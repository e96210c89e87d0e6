"""Collectives over pytrees: bucketed gradient averaging and parameter broadcast.

Twin: the gradient all-reduce of ``torch.nn.parallel.DistributedDataParallel`` (flat
buckets of about 25 MiB, each multiplied by 1 / world size and then summed) and
``DistributedDataParallel``'s start-up broadcast of rank 0's parameters.

Never differentiate through these functions: the backward of an all-reduce is another
all-reduce, which would multiply gradients by the world size. ``make_train_step`` calls
``all_reduce`` on the gradient tree after ``grad_and_value``, outside the transform.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist

from .. import tree
from ..typing import PyTree, Tensor
from .faults import CollectiveError
from .process import is_initialized, rank, world_size

__all__ = ["all_reduce_mean", "broadcast", "plan_buckets", "pack", "unpack"]

Bucket = list[int]


def plan_buckets(leaves: Sequence[Any], bucket_bytes: int, *, floating_only: bool = True,
                 first_bucket_bytes: int | None = None) -> list[Bucket]:
    """Group leaf indices into buckets, closing a bucket once it holds ``bucket_bytes`` or more.

    DDP's rule (``torch.distributed._compute_bucket_assignment_by_size``): the leaf that
    reaches the limit stays in the bucket, so a bucket may exceed it by its last leaf. Only
    tensor leaves take part (only floating ones when ``floating_only``); a bucket holds one
    dtype on one device, the leaves keep their tree order, and buckets come in the order they
    were opened. ``first_bucket_bytes`` is the limit of the first bucket of each dtype instead
    (DDP's small first bucket: communication starts early in backward).
    """
    buckets: list[Bucket] = []
    open_: dict[tuple[torch.dtype, torch.device], Bucket] = {}   # per slot: its open bucket
    filled: dict[tuple[torch.dtype, torch.device], int] = {}     # and that bucket's bytes
    past_first: set[tuple[torch.dtype, torch.device]] = set()
    for i, x in enumerate(leaves):
        if not isinstance(x, torch.Tensor) or (floating_only and not x.is_floating_point()):
            continue
        slot = (x.dtype, x.device)
        if slot not in open_:
            open_[slot], filled[slot] = [], 0
            buckets.append(open_[slot])
        open_[slot].append(i)
        filled[slot] += x.numel() * x.element_size()
        limit = bucket_bytes if first_bucket_bytes is None or slot in past_first else first_bucket_bytes
        if filled[slot] >= limit:
            del open_[slot]
            past_first.add(slot)
    return buckets


def pack(leaves: Sequence[Any] | Mapping[int, Any], bucket: Bucket, scale: float = 1.0) -> Tensor:
    """The bucket's leaves, each times ``scale``, concatenated into one new flat tensor ``[n]``.

    Each leaf is written into its slice of the bucket already scaled (one pass over the memory;
    DDP's reducer scales by ``1 / world_size`` while copying the same way): a concatenation then
    a division read and wrote every gradient twice.
    """
    parts = [leaves[i].reshape(-1) for i in bucket]
    flat = torch.empty(sum(p.numel() for p in parts), dtype=parts[0].dtype, device=parts[0].device)
    for part, dest in zip(parts, flat.split([p.numel() for p in parts]), strict=True):
        if scale == 1.0:
            dest.copy_(part)
        else:
            torch.mul(part, scale, out=dest)
    return flat


def unpack(flat: Tensor, leaves: list[Any], bucket: Bucket, out: list[Any]) -> None:
    """Write views of ``flat`` shaped like the bucket's leaves into ``out`` (a Python list)."""
    parts = flat.split([leaves[i].numel() for i in bucket])
    for j, i in enumerate(bucket):
        out[i] = parts[j].view(leaves[i].shape)


def _bucket_bytes(fn: str, bucket_mb: Any, name: str = "bucket_mb") -> int:
    if isinstance(bucket_mb, bool) or not isinstance(bucket_mb, (int, float)) or not bucket_mb > 0:
        raise ValueError(f"{fn}: {name} must be a positive number; got {bucket_mb!r}")
    return int(bucket_mb * 2**20)


def _raise_collective(fn: str, err: Exception) -> None:
    raise CollectiveError(
        f"{fn}: the collective failed on rank {rank()} of {world_size()}: another rank probably died, "
        f"hangs or runs a different program (the wait is bounded by init(timeout=...)); cause: {err}"
    ) from err


def all_reduce_mean(grads: PyTree, bucket_mb: float = 25.0) -> PyTree:
    """The mean of ``grads`` over all ranks, as a new tree (the input is never modified).

    Floating leaves are flattened into buckets of about ``bucket_mb`` MiB (one dtype per
    bucket, closed once full: :func:`plan_buckets`), each bucket is multiplied by
    ``1 / world_size`` and summed across ranks (DDP's order and arithmetic, which keeps fp16
    sums from overflowing). Integer, bool and non-tensor leaves (e.g. ``num_batches_tracked``)
    come back unchanged, so the same call averages the float running statistics of a
    BatchNorm state tree: ``all_reduce_mean(train_state.state)``.

    Eagerly every bucket's all-reduce is issued asynchronously and then all are waited on,
    so communication of bucket ``i`` overlaps with launching bucket ``i + 1``. Under
    ``torch.compile`` (``make_train_step(compile=True)`` compiles the whole step with this
    call inside) the synchronous ``dist.all_reduce`` is used, because ``async_op=True``
    breaks the graph; Dynamo lowers it to functional collectives that are waited on at
    first use. Use this one function in both cases.

    Args:
        grads: a pytree; floating leaves ``[...]`` of any float dtype on the process group's
            device (CPU for gloo, CUDA for NCCL).
        bucket_mb: bucket size in MiB (DDP's default is 25).

    Returns:
        A tree of the same structure. With a world of one, the input's leaves themselves.

    Raises:
        ValueError: ``bucket_mb`` is not positive.
        CollectiveError: eagerly, a rank died or hung past ``init(timeout=...)``.
    """
    fn = "deepfn.distributed.all_reduce_mean"
    size_bytes = _bucket_bytes(fn, bucket_mb)
    n = world_size()
    leaves, spec = tree.leaves(grads), tree.structure(grads)
    if n == 1:
        return tree.unflatten_leaves(spec, leaves)
    out = list(leaves)
    buckets = plan_buckets(leaves, size_bytes)
    flats = [pack(leaves, b, 1.0 / n) for b in buckets]
    if torch.compiler.is_compiling():
        for flat in flats:
            dist.all_reduce(flat)
    else:
        try:
            works = [dist.all_reduce(flat, async_op=True) for flat in flats]
            for work in works:
                work.wait()
        except RuntimeError as err:   # gloo/NCCL report timeouts and lost peers as RuntimeError
            _raise_collective(fn, err)
    for j, b in enumerate(buckets):
        unpack(flats[j], leaves, b, out)
    return tree.unflatten_leaves(spec, out)


def broadcast(params: PyTree, src: int = 0, bucket_mb: float = 25.0) -> PyTree:
    """Rank ``src``'s values of every tensor leaf, on every rank, as a new tree.

    Call it on freshly initialised parameters (and state, and optimizer state) so that all
    ranks start identical, as DDP does in its constructor. Every rank must pass a tree of
    the same structure, shapes and dtypes (:func:`check_same_structure` checks that).

    Args:
        params: a pytree; tensor leaves of any dtype (integer ones too) are broadcast,
            non-tensor leaves are kept as they are on each rank.
        src: the rank whose values everyone receives.
        bucket_mb: bucket size in MiB.

    Returns:
        A tree of the same structure; the input is never modified. With a world of one, the
        input's leaves themselves.

    Raises:
        ValueError: ``src`` is not a rank of the job, or ``bucket_mb`` is not positive.
        CollectiveError: eagerly, a rank died or hung past ``init(timeout=...)``.
    """
    fn = "deepfn.distributed.broadcast"
    size_bytes = _bucket_bytes(fn, bucket_mb)
    n = world_size()
    if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < n:
        raise ValueError(f"{fn}: src must be a rank in [0, {n}); got {src!r}")
    leaves, spec = tree.leaves(params), tree.structure(params)
    if n == 1 or not is_initialized():
        return tree.unflatten_leaves(spec, leaves)
    out = list(leaves)
    buckets = plan_buckets(leaves, size_bytes, floating_only=False)
    flats = [pack(leaves, b) for b in buckets]
    try:
        works = [dist.broadcast(flat, src=src, async_op=True) for flat in flats]
        for work in works:
            work.wait()
    except RuntimeError as err:
        _raise_collective(fn, err)
    for j, b in enumerate(buckets):
        unpack(flats[j], leaves, b, out)
    return tree.unflatten_leaves(spec, out)

"""Gradients averaged over ranks while the backward pass still runs (DDP's overlap), eagerly.

Twin: the reducer of ``torch.nn.parallel.DistributedDataParallel``. Gradient hooks on the
parameters mark a bucket ready once backward has produced all its gradients, and the
bucket's all-reduce starts at once, asynchronously, while backward goes on with earlier
layers. ``make_train_step(all_reduce=distributed.all_reduce_mean, compile=False)`` uses it;
the numbers equal ``all_reduce_mean(torch.func.grad(...))``'s.

Why plain autograd here: ``torch.func.grad`` hands a custom backward functorch-wrapped
tensors that a collective cannot take, and it has no per-tensor hooks. Inside this function
the gradient is taken with ``torch.autograd.grad`` on detached copies of the parameters,
so the surrounding step stays pure: nothing outside is read or written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from .. import tree
from ..train.autograd import detach_tree, detached_aliases
from ..typing import PyTree
from .bucket_hooks import backward_with_bucket_hooks, buckets_from_end
from .collectives import _bucket_bytes, pack, unpack
from .process import world_size

__all__ = ["grad_and_all_reduce_mean"]

_FN = "deepfn.distributed.grad_and_all_reduce_mean"


def grad_and_all_reduce_mean(objective: Callable[..., tuple[torch.Tensor, Any]], params: PyTree, *args: Any,
                             accumulated: PyTree | None = None, divide_by: int = 1,
                             bucket_mb: float = 25.0, first_bucket_mb: float = 1.0,
                             ) -> tuple[PyTree, tuple[torch.Tensor, Any]]:
    """``torch.func.grad_and_value(objective, has_aux=True)(params, *args)``, gradients averaged over ranks.

    Each rank's gradient of a leaf is ``(accumulated + g) / divide_by`` (earlier micro-batches'
    sum, then the mean over ``divide_by`` micro-batches), and the returned tree is the mean of
    that over all ranks, computed by the same buckets and in the same order of operations as
    :func:`all_reduce_mean`. Buckets (``bucket_mb`` MiB, one dtype each) are formed from the
    last leaf backwards, as backward produces them, and are launched strictly in bucket order
    so every rank issues the same collectives in the same order.

    Args:
        objective: ``objective(params, *args) -> (scalar, aux)``; aux is returned detached.
        params: the parameter tree; floating leaves are differentiated, others passed through.
        accumulated: a tree like ``params`` of gradients to add before averaging, or None.
        divide_by: the number of micro-batches the gradient is a sum over (1: none).
        bucket_mb: bucket size in MiB (DDP's default is 25).
        first_bucket_mb: the size of the first bucket (the last layers'), in MiB; DDP's 1 MiB:
            a small first bucket starts communication early in backward.

    Returns:
        ``(grads, (value, aux))``: ``grads`` a tree like ``params`` (floating leaves the loss
        does not reach get zeros, averaged like the rest; non-floating leaves come back as
        they are), ``value`` and ``aux`` detached.

    Raises:
        CollectiveError: a rank died or hung past ``init(timeout=...)``.
    """
    size_bytes = _bucket_bytes(_FN, bucket_mb)
    first_bytes = min(_bucket_bytes(_FN, first_bucket_mb, "first_bucket_mb"), size_bytes)
    n = world_size()
    leaves, spec = tree.leaves(params), tree.structure(params)
    extra = tree.leaves(accumulated) if accumulated is not None else None
    inputs, diff = detached_aliases(leaves)
    # DDP's order: the last layers' gradients first, in a small first bucket.
    buckets = buckets_from_end(leaves, size_bytes, first_bytes)

    def launch(bucket: list[int], grads: dict[int, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        local = {i: _local(grads.pop(i), None if extra is None else extra[i], divide_by) for i in bucket}
        flat = pack(local, bucket, 1.0 / n)
        return flat, dist.all_reduce(flat, async_op=True)

    def backward() -> tuple[torch.Tensor, Any]:
        with torch.enable_grad():
            value, aux = objective(tree.unflatten_leaves(spec, inputs), *args)
            torch.autograd.grad(value, [inputs[i] for i in diff], allow_unused=True)
        return value, aux

    flats, (value, aux) = backward_with_bucket_hooks(_FN, inputs, diff, buckets, backward, launch,
                                                     post_accumulate=False)
    out = list(leaves)
    for flat, bucket in zip(flats, buckets, strict=True):
        unpack(flat, leaves, bucket, out)
    return tree.unflatten_leaves(spec, out), (value.detach(), detach_tree(aux))


def _local(g: torch.Tensor, extra: torch.Tensor | None, divide_by: int) -> torch.Tensor:
    """This rank's part of the mean: ``(extra + g) / divide_by``."""
    if extra is not None:
        g = extra + g
    return g / divide_by if divide_by != 1 else g

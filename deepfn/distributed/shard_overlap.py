"""Gradients reduce-scattered while the backward pass still runs (FSDP's overlap), eagerly.

Twin: the post-backward hooks of ``torch.distributed.fsdp.fully_shard``. Each parameter's
gradient, once backward has accumulated it, is taken out of the autograd leaf (so the whole
gradient is freed as soon as its bucket is sent); a bucket whose gradients are all there is
reduce-scattered at once, asynchronously, while backward goes on with earlier layers. The
numbers equal :func:`~deepfn.distributed.shard_collectives.reduce_scatter_mean_leaves` of
``(accumulated + torch.func.grad(...)) / divide_by``: the same buckets' arithmetic (each
gradient divided by ``divide_by``, then multiplied by ``1 / N``, then summed over ranks).

Like :func:`~deepfn.distributed.grad_and_all_reduce_mean`, the gradient is taken with plain
autograd on detached aliases of the parameters: nothing outside is read or written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from ..train.autograd import detach_tree, detached_aliases
from ..tree import flat as _flat
from ..typing import PyTree, Tensor
from .bucket_hooks import backward_with_bucket_hooks, buckets_from_end
from .collectives import _bucket_bytes
from .process import world_size
from .shard_collectives import pack_chunks
from .sharded_state import chunk_size

__all__ = ["grad_and_reduce_scatter_mean"]

_FN = "deepfn.distributed.grad_and_reduce_scatter_mean"


def grad_and_reduce_scatter_mean(objective: Callable[..., tuple[Tensor, Any]], params: PyTree, *args: Any,
                                 accumulated: list[Tensor] | None = None, divide_by: int = 1,
                                 bucket_mb: float = 25.0) -> tuple[list[Tensor], tuple[Tensor, Any]]:
    """This rank's chunk of the mean over ranks of ``(accumulated + grad) / divide_by``, per leaf.

    Args:
        objective: ``objective(params, *args) -> (scalar, aux)``; aux is returned detached.
        params: the whole parameter tree (floating tensor leaves only).
        accumulated: earlier micro-batches' summed gradients, one whole tensor per leaf, or None.
        divide_by: the number of micro-batches.
        bucket_mb: bucket size in MiB of this rank's chunks.

    Returns:
        ``(chunks, (value, aux))``: one 1-D chunk ``[ceil(numel / N)]`` per leaf in tree order.

    Raises:
        CollectiveError: a rank died or hung.
    """
    n = world_size()
    leaves, spec = _flat.flatten(params)
    inputs, diff = detached_aliases(leaves)
    if len(diff) != len(leaves):
        raise TypeError(f"{_FN}: every parameter leaf must be a floating tensor")
    chunks = [chunk_size(x.numel(), n) for x in leaves]
    # Buckets by the bytes of this rank's chunks (what each rank receives), not of whole leaves.
    stand_ins = [x.new_empty(1).expand(c) for x, c in zip(leaves, chunks, strict=True)]
    buckets = buckets_from_end(stand_ins, _bucket_bytes(_FN, bucket_mb))

    def launch(bucket: list[int], grads: dict[int, Tensor]) -> tuple[Tensor, Any]:
        scaled = []
        for i in bucket:   # each whole gradient is dropped once its scaled copy exists
            g = grads.pop(i) if accumulated is None else accumulated[i] + grads.pop(i)
            scaled.append(g / divide_by if divide_by != 1 else g)
        full = pack_chunks(scaled, [chunks[i] for i in bucket], n)
        del scaled, g
        if n == 1:
            return full[0], None
        out = full.new_empty(full.shape[1])
        return out, dist.reduce_scatter_single(out, full.view(-1), async_op=True)

    def backward() -> tuple[Tensor, Any]:
        with torch.enable_grad():
            value, aux = objective(_flat.unflatten(spec, inputs), *args)
            if value.requires_grad:
                torch.autograd.backward(value, inputs=[inputs[i] for i in diff])
        return value, aux

    outs, (value, aux) = backward_with_bucket_hooks(_FN, inputs, diff, buckets, backward, launch,
                                                    post_accumulate=True)
    return _split(outs, buckets, chunks, leaves), (value.detach(), detach_tree(aux))


def _split(outs: list[Tensor], buckets: list[list[int]], chunks: list[int], leaves: list[Tensor]) -> list[Tensor]:
    """Each leaf's chunk ``[chunks[i]]``: its slice of its bucket's reduce-scattered ``out``."""
    result: list[Tensor] = [leaves[0]] * len(leaves)
    for out, bucket in zip(outs, buckets, strict=True):
        offset = 0
        for i in bucket:
            result[i] = out[offset:offset + chunks[i]]
            offset += chunks[i]
    return result

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
from .collectives import _bucket_bytes, _raise_collective, plan_buckets
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
    # Backward produces the last layers' gradients first: bucket from the end.
    last = len(leaves) - 1
    stand_ins = [leaves[i].new_empty(1).expand(chunks[i]) for i in range(last, -1, -1)]
    buckets = [[last - j for j in b] for b in plan_buckets(stand_ins, _bucket_bytes(_FN, bucket_mb))]
    bucket_of = {i: b for b, bucket in enumerate(buckets) for i in bucket}
    grads: list[Tensor | None] = [None] * len(leaves)
    seen = [False] * len(leaves)
    missing = [len(b) for b in buckets]
    outs: list[Tensor] = []
    works: list[Any] = []

    def launch_ready() -> None:
        while len(outs) < len(buckets) and missing[len(outs)] == 0:
            bucket = buckets[len(outs)]
            scaled = []
            for i in bucket:
                g = grads[i] if accumulated is None else accumulated[i] + grads[i]
                scaled.append(g / divide_by if divide_by != 1 else g)
                grads[i] = None          # the whole gradient is no longer needed
            full = pack_chunks(scaled, [chunks[i] for i in bucket], n)
            del scaled
            if n == 1:
                outs.append(full[0])
            else:
                outs.append(full.new_empty(full.shape[1]))
                works.append(dist.reduce_scatter_single(outs[-1], full.view(-1), async_op=True))

    def hook_for(i: int) -> Callable[[Tensor], None]:
        def hook(p: Tensor) -> None:
            grads[i], p.grad, seen[i] = p.grad, None, True
            missing[bucket_of[i]] -= 1
            launch_ready()
        return hook

    handles = [inputs[i].register_post_accumulate_grad_hook(hook_for(i)) for i in diff]
    try:
        with torch.enable_grad():
            value, aux = objective(_flat.unflatten(spec, inputs), *args)
            if value.requires_grad:
                torch.autograd.backward(value, inputs=[inputs[i] for i in diff])
        for i in diff:
            if not seen[i]:   # the loss does not reach this leaf: a zero gradient, as torch.func gives
                grads[i] = torch.zeros_like(leaves[i])
                missing[bucket_of[i]] -= 1
        launch_ready()
        for work in works:
            work.wait()
    except RuntimeError as err:
        if works:
            _raise_collective(_FN, err)
        raise
    finally:
        for h in handles:
            h.remove()
    result: list[Tensor] = [leaves[0]] * len(leaves)
    for out, bucket in zip(outs, buckets, strict=True):
        offset = 0
        for i in bucket:
            result[i] = out[offset:offset + chunks[i]]
            offset += chunks[i]
    return result, (value.detach(), detach_tree(aux))


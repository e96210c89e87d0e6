"""ZeRO-3's forward and backward one unit at a time inside compiled graphs (torchtitan's
SimpleFSDP): the compiled twin of :mod:`~deepfn.distributed.shard_gather`.

- :func:`objective_on_chunks` turns an objective of whole parameters into one of this rank's
  chunks, for ``torch.compile``: the model reads a
  :class:`~deepfn.distributed.shard_units.LazyParams`, and reading a unit casts its chunks to
  the compute dtype and all-gathers them with a collective the compiler traces
  (:func:`deepfn._torch.traceable_all_gather`), so each gather lands in the graph where the
  model first reads the unit. Each gather runs inside a ``torch.utils.checkpoint`` region
  whose selective policy marks every op ``MUST_RECOMPUTE``: AOTAutograd's partitioner then
  saves the chunks for backward, never the whole tensors, and gathers the unit again in the
  backward graph just before its first use there (the partitioner orders recomputed nodes as
  autograd would run them). Inductor frees every buffer after its last use, so about one
  unit's whole tensors are alive at a time, forward and backward.
- The gather's gradient is a reduce-scatter of the sum over ranks, in the graph, where the
  unit's backward is done; :func:`grad_of_chunks` differentiates the compiled objective with
  ``torch.autograd.grad`` on detached chunks and divides by ``N`` and the micro-batches.

Under a policy the chunks are cast before the gather (half the traffic in bf16), so the
reduce-scatter sums in the compute dtype too (FSDP2's default ``reduce_dtype``); the eager
path sums in the chunks' dtype. In a world of one without a process group the "gather" is
the concatenation of the chunks (no collective).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from .._torch import traceable_all_gather
from ..train.autograd import detach_tree
from ..typing import Tensor
from .process import is_initialized, world_size
from .shard_units import LazyParams, Plan

__all__ = ["compiled_gather_available", "objective_on_chunks", "grad_of_chunks"]

_FN = "deepfn.distributed.objective_on_chunks"


def compiled_gather_available() -> bool:
    """Whether compiled steps can gather one unit at a time here: a traceable all-gather (the
    seam's hook on), or a world of one without a process group (nothing to gather)."""
    return not is_initialized() or traceable_all_gather() is not None


def _recompute_everything(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    # Every op of a gather region (cast, concatenation, all-gather, views) runs again in backward.
    return CheckpointPolicy.MUST_RECOMPUTE


def _policy() -> Any:
    return create_selective_checkpoint_contexts(_recompute_everything)


def _gatherer(plan: Plan, shapes: Sequence[tuple[int, ...]], dtypes: Sequence[torch.dtype]
              ) -> Callable[..., list[Tensor]]:
    """``gather(uid, *chunks) -> unit uid's whole tensors``, traceable."""
    n = world_size()
    all_gather = traceable_all_gather() if is_initialized() else None
    if is_initialized() and all_gather is None:
        raise RuntimeError(f"{_FN}: no traceable all-gather in this torch (the seam's 'traceable_gather' hook is "
                           f"off); check compiled_gather_available() first")
    group = dist.group.WORLD.group_name if all_gather is not None else None

    def gather(uid: int, *chunks: Tensor) -> list[Tensor]:
        leaves = plan.units[uid]
        local = torch.cat([c.to(dtypes[i]) for c, i in zip(chunks, leaves, strict=True)])
        gathered = (all_gather(local, n, group) if all_gather is not None else local).view(n, -1)
        wholes, offset = [], 0
        for c, i in zip(chunks, leaves, strict=True):
            numel = _numel(shapes[i])
            wholes.append(gathered[:, offset:offset + c.numel()].reshape(-1)[:numel].view(shapes[i]))
            offset += c.numel()
        return wholes
    return gather


def objective_on_chunks(objective: Callable[..., tuple[Tensor, Any]], plan: Plan,
                        shapes: Sequence[tuple[int, ...]], dtypes: Sequence[torch.dtype], *,
                        per_unit: bool = True) -> Callable[..., tuple[Tensor, Any]]:
    """``f(chunks, *args) = objective(whole params, *args)``, for ``torch.compile`` (see the
    module docstring).

    Args:
        objective: ``objective(params, *args) -> (scalar, aux)``; ``params`` is a
            :class:`~deepfn.distributed.shard_units.LazyParams` of whole tensors in ``dtypes``.
        plan: the units (:func:`~deepfn.distributed.shard_units.plan_units` of the chunks' tree).
        shapes: each leaf's whole shape.
        dtypes: the dtype each leaf is gathered and computed in.
        per_unit: False gathers every unit at the start and keeps it for backward (the
            compiled gather-everything step's memory, for comparison).

    Returns:
        ``f(chunks, *args) -> (scalar, aux)``; ``chunks``: this rank's 1-D chunk
        ``[ceil(numel / N)]`` of each leaf, in flat order.
    """
    gather = _gatherer(plan, shapes, dtypes)

    def on_chunks(chunks: list[Tensor], *args: Any) -> tuple[Tensor, Any]:
        done: dict[int, list[Tensor]] = {}   # a unit read twice (a tied embedding) is gathered once

        def read(uid: int) -> list[Tensor]:
            if uid not in done:
                mine = [chunks[i] for i in plan.units[uid]]
                done[uid] = (checkpoint(gather, uid, *mine, use_reentrant=False, context_fn=_policy)
                             if per_unit and mine else gather(uid, *mine) if mine else [])
            return done[uid]

        if not per_unit:
            for uid in range(len(plan.units)):
                read(uid)
        return objective(LazyParams(plan.root, read), *args)
    return on_chunks


def grad_of_chunks(run: Callable[..., tuple[Tensor, Any]], chunks: list[Tensor], *args: Any, divide_by: int = 1
                   ) -> tuple[list[Tensor], tuple[Tensor, Any]]:
    """This rank's chunk of the mean over ranks of ``grad / divide_by``, per leaf, where ``run``
    is (the compiled) :func:`objective_on_chunks`: ``torch.autograd.grad`` through its backward
    graph, whose reduce-scatters sum over ranks.

    Returns:
        ``(grad_chunks, (value, aux))``: one 1-D chunk per leaf in flat order; aux detached.

    Raises:
        TypeError: a chunk is not a floating tensor.
    """
    for i, c in enumerate(chunks):
        if not (isinstance(c, torch.Tensor) and c.is_floating_point()):
            raise TypeError(f"deepfn.distributed.grad_of_chunks: every parameter chunk must be a floating tensor; "
                            f"leaf {i} is {type(c).__name__ if not isinstance(c, torch.Tensor) else c.dtype}")
    inputs = [c.detach().requires_grad_() for c in chunks]
    with torch.enable_grad():
        value, aux = run(inputs, *args)
        grads: list[Tensor | None] = [None] * len(inputs)
        if value.requires_grad:
            grads = list(torch.autograd.grad(value, inputs, allow_unused=True))
    scale = 1.0 / (world_size() * divide_by)
    out = [_mean(g, c, scale) for g, c in zip(grads, chunks, strict=True)]
    return out, (value.detach(), detach_tree(aux))


def _mean(grad: Tensor | None, chunk: Tensor, scale: float) -> Tensor:
    """``grad`` (a sum over ranks) times ``scale`` in ``chunk``'s dtype; zeros for an unread leaf.
    In place: the backward graph's outputs are this call's own (no second copy of the gradients)."""
    if grad is None:
        return torch.zeros_like(chunk)
    if grad.dtype != chunk.dtype:
        grad = grad.to(chunk.dtype)
    return grad.mul_(scale) if scale != 1.0 else grad


def _numel(shape: Sequence[int]) -> int:
    m = 1
    for s in shape:
        m *= int(s)
    return m


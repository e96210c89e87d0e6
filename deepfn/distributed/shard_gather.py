"""ZeRO-3's forward and backward one unit at a time, eagerly: each unit's parameters
all-gathered when the model reads them and freed after, its gradient reduce-scattered as soon
as its backward is done. Twin: ``torch.distributed.fsdp.fully_shard``'s pre-forward gather,
re-gather before backward and post-backward reduce-scatter.

- The model reads a :class:`~deepfn.distributed.shard_units.LazyParams`; reading a unit runs
  ``_GatherUnit``, an autograd Function: forward casts this rank's chunks to the compute dtype
  (before gathering: half the traffic under a bf16 policy) and all-gathers them into whole
  tensors; backward casts the whole gradients to the chunks' dtype and reduce-scatters their
  mean (divided by the micro-batches, then by ``N``: the arithmetic of
  :func:`~deepfn.distributed.shard_collectives.reduce_scatter_mean_leaves`), except that a
  unit's large gradients (a layer's weight) are reduce-scattered straight from themselves and
  their sums multiplied by ``1 / N`` after
  (:func:`~deepfn.distributed.shard_collectives.reduce_scatter_mean_whole`): no packed copy of
  the largest tensor of the backward pass.
- Autograd would keep the whole tensors for backward (``linear`` saves its weight), so while
  the forward runs a ``saved_tensors_hooks`` packs every saved tensor that lives in a gathered
  unit's memory as a reference to the unit, and backward gathers the unit again when it first
  needs it, keeping it until the unit's ``_GatherUnit`` backward (which runs after every use).
- Gradients are taken with ``torch.autograd.grad`` on detached aliases of the chunks (as
  :mod:`deepfn.train.autograd`), so no whole gradient tree is ever held.

Eager only: ``torch.func.grad`` refuses saved-tensor hooks (a ``RuntimeError`` in torch
2.14) and Dynamo does not trace the weak references and storage registry, so steps under
``torch.func`` transforms keep the sharded step's gather-everything path, and compiled steps
take the twin that gathers inside their graphs (:mod:`~deepfn.distributed.shard_gather_compiled`).
:class:`GatherCount` counts the bytes of gathered memory alive (weak references to the
storages of the gathered tensors).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..train.autograd import detach_tree
from ..typing import Tensor
from .collectives import _raise_collective
from .process import world_size
from .shard_collectives import reduce_scatter_mean_flat, reduce_scatter_mean_whole
from .shard_units import LazyParams, Plan
from .sharded_state import chunk_size

__all__ = ["GatherCount", "grad_per_unit"]

_FN = "deepfn.distributed.grad_per_unit"
#: A unit's leaf holding at least 1 / WHOLE_SHARE of its gradient bytes is reduce-scattered alone.
WHOLE_SHARE = 4


@dataclass
class GatherCount:
    """Bookkeeping of one call: ``gathers`` collectives run (forward and backward),
    ``live_bytes`` of gathered tensors now alive and their ``peak_bytes``."""
    gathers: int = 0
    live_bytes: int = 0
    peak_bytes: int = 0

    def add(self, n: int) -> None:
        self.live_bytes += n
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)

    def sub(self, n: int) -> None:
        self.live_bytes -= n


class _Session:
    """The state of one forward-backward: the chunks, the plan, the gathered tensors' registry."""

    def __init__(self, chunks: list[Tensor], shapes: Sequence[tuple[int, ...]], dtypes: list[torch.dtype],
                 plan: Plan, divide_by: int, count: GatherCount):
        self.chunks, self.shapes, self.dtypes, self.plan = chunks, shapes, dtypes, plan
        self.n, self.divide_by, self.count = world_size(), divide_by, count
        self.registry: dict[int, tuple] = {}   # storage address -> unit, pos, dtype, storage
        self.regathered: dict[int, list[Tensor]] = {}                 # backward's copies, per unit
        self.alive: dict[int, list[weakref.ref]] = {}                 # forward's, while in use

    def gather(self, uid: int) -> list[Tensor]:
        """Unit ``uid``'s whole tensors through ``_GatherUnit`` (differentiable to the chunks)."""
        leaves = self.plan.units[uid]
        if not leaves:
            return []
        refs = self.alive.get(uid, ())
        wholes = [r() for r in refs]
        if refs and all(w is not None for w in wholes):   # still read by the model: no new gather
            return wholes
        wholes = list(_GatherUnit.apply(self, uid, *(self.chunks[i] for i in leaves)))
        self.alive[uid] = [weakref.ref(w) for w in wholes]
        return wholes

    def all_gather(self, uid: int, chunks: Sequence[Tensor]) -> list[Tensor]:
        """Whole tensors of unit ``uid`` from every rank's ``chunks`` (one collective), each its
        own memory, registered for the saved-tensor hooks and counted."""
        leaves = self.plan.units[uid]
        local = torch.cat([c.to(self.dtypes[i]) for c, i in zip(chunks, leaves, strict=True)])
        widths = [c.numel() for c in chunks]
        if self.n == 1:   # torch.cat made a new tensor already
            gathered = local.view(1, -1)
        else:
            gathered = local.new_empty(self.n * local.numel())
            try:
                dist.all_gather_single(gathered, local)
            except RuntimeError as err:
                _raise_collective(_FN, err)
            gathered = gathered.view(self.n, -1)
        self.count.gathers += 1
        wholes, offset = [], 0
        for c, i in zip(widths, leaves, strict=True):
            numel = _numel(self.shapes[i])
            part = gathered[:, offset:offset + c]
            # One leaf: a view of the gathered buffer; several: each copied out of its columns.
            flat = part.reshape(-1) if len(leaves) == 1 else part.clone(memory_format=torch.contiguous_format).view(-1)
            wholes.append(flat[:numel].view(self.shapes[i]))
            offset += c
        for pos, w in enumerate(wholes):
            # Memory is counted, and found again, by storage: views (``w.t()`` saved by linear)
            # keep it alive after the whole tensor itself is gone.
            storage = w.untyped_storage()
            address, nbytes = storage.data_ptr(), storage.nbytes()
            self.count.add(nbytes)
            self.registry[address] = (uid, pos, w.dtype, weakref.ref(storage))
            weakref.finalize(storage, self._forget, address, nbytes)
        return wholes

    def _forget(self, address: int, nbytes: int) -> None:
        self.count.sub(nbytes)
        entry = self.registry.get(address)
        if entry is not None and entry[3]() is None:
            del self.registry[address]

    def reduce_scatter(self, uid: int, grads: Sequence[Tensor]) -> list[Tensor]:
        """This rank's chunk of the mean over ranks of ``grads / divide_by`` (unit ``uid``).

        The unit's large leaves (see :func:`_whole_leaves`) are reduce-scattered each straight
        from its gradient, the others packed into one buffer (one collective): the packed copy
        of a layer's weight gradient would double the largest tensor of the backward pass."""
        self.regathered.pop(uid, None)   # every use of the unit is done: free its re-gathered copy
        leaves = self.plan.units[uid]
        widths = [self.chunks[i].numel() for i in leaves]
        scaled = [g.to(self.chunks[i].dtype) for g, i in zip(grads, leaves, strict=True)]
        if self.divide_by != 1:
            scaled = [g / self.divide_by for g in scaled]
        whole = _whole_leaves(scaled, widths, self.n) if self.divide_by == 1 else []
        out: list[Tensor | None] = [None] * len(leaves)
        for j in whole:
            out[j] = reduce_scatter_mean_whole(scaled[j], _FN)
            scaled[j] = None   # type: ignore[call-overload]
        rest = [j for j in range(len(leaves)) if out[j] is None]
        if rest:
            mine = reduce_scatter_mean_flat([scaled[j] for j in rest], [widths[j] for j in rest], _FN)
            for j, part in zip(rest, mine.split([widths[j] for j in rest]), strict=True):
                out[j] = part
        return out   # type: ignore[return-value]

    def pack(self, t: Tensor) -> Any:
        if t.layout != torch.strided or t.device.type == "meta":
            return t
        entry = self.registry.get(t.untyped_storage().data_ptr())
        if entry is None or entry[3]() is None or entry[2] != t.dtype:
            return t
        return (entry[0], entry[1], t.size(), t.stride(), t.storage_offset())

    def unpack(self, packed: Any) -> Tensor:
        if isinstance(packed, torch.Tensor):
            return packed
        uid, pos, size, stride, offset = packed
        wholes = self.regathered.get(uid)
        if wholes is None:
            leaves = self.plan.units[uid]
            with torch.no_grad():
                wholes = self.all_gather(uid, [self.chunks[i].detach() for i in leaves])
            self.regathered[uid] = wholes
        return wholes[pos].as_strided(size, stride, offset)


class _GatherUnit(torch.autograd.Function):
    """``(session, uid, *chunks) -> unit uid's whole tensors``; backward reduce-scatters."""

    @staticmethod
    def forward(session: _Session, uid: int, *chunks: Tensor) -> tuple[Tensor, ...]:
        return tuple(session.all_gather(uid, chunks))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        ctx.session, ctx.uid = inputs[0], inputs[1]

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Any, ...]:
        return (None, None, *ctx.session.reduce_scatter(ctx.uid, grads))


def grad_per_unit(objective: Callable[..., tuple[Tensor, Any]], chunks: list[Tensor],
                  shapes: Sequence[tuple[int, ...]], plan: Plan, dtypes: list[torch.dtype], *args: Any,
                  divide_by: int = 1, count: GatherCount | None = None
                  ) -> tuple[list[Tensor], tuple[Tensor, Any]]:
    """This rank's chunk of the mean over ranks of ``grad / divide_by``, per leaf, gathering one
    unit at a time (see the module docstring).

    Args:
        objective: ``objective(params, *args) -> (scalar, aux)``; ``params`` is a
            :class:`~deepfn.distributed.shard_units.LazyParams` of whole tensors in ``dtypes``.
        chunks: this rank's 1-D chunk ``[ceil(numel / N)]`` of each parameter leaf (floating).
        shapes: each leaf's whole shape.
        plan: the units (:func:`~deepfn.distributed.shard_units.plan_units` of the chunks' tree).
        dtypes: the dtype each leaf is gathered and computed in (its chunk's, or a policy's).
        divide_by: the number of micro-batches.
        count: filled with the gathers and the peak bytes of gathered tensors, when given.

    Returns:
        ``(grad_chunks, (value, aux))``: one 1-D chunk per leaf in flat order; aux detached.

    Raises:
        TypeError: a chunk is not a floating tensor.
        CollectiveError: a rank died or hung.
    """
    for i, c in enumerate(chunks):
        if not (isinstance(c, torch.Tensor) and c.is_floating_point()):
            raise TypeError(f"{_FN}: every parameter chunk must be a floating tensor; leaf {i} is "
                            f"{type(c).__name__ if not isinstance(c, torch.Tensor) else c.dtype}")
    inputs = [c.detach().requires_grad_() for c in chunks]
    session = _Session(inputs, shapes, dtypes, plan, divide_by, count if count is not None else GatherCount())
    with torch.enable_grad():
        with torch.autograd.graph.saved_tensors_hooks(session.pack, session.unpack):
            value, aux = objective(LazyParams(plan.root, session.gather), *args)
        grads = [None] * len(inputs)
        if value.requires_grad:
            grads = list(torch.autograd.grad(value, inputs, allow_unused=True))
    n = session.n
    out = [g if g is not None else chunks[i].new_zeros(chunk_size(_numel(shapes[i]), n))
           for i, g in enumerate(grads)]
    return out, (value.detach(), detach_tree(aux))


def _whole_leaves(grads: Sequence[Tensor], widths: Sequence[int], n: int) -> list[int]:
    """The positions of the gradients reduce-scattered on their own: those that fill their
    ``n`` chunks exactly (no padding) and hold at least ``1 / WHOLE_SHARE`` of the unit's
    bytes (a layer's weight, not its bias: at most ``WHOLE_SHARE`` more collectives per unit)."""
    if n == 1:
        return []
    total = sum(g.numel() * g.element_size() for g in grads)
    return [j for j, (g, c) in enumerate(zip(grads, widths, strict=True))
            if g.numel() == n * c and g.numel() * g.element_size() * WHOLE_SHARE >= total]


def _numel(shape: Sequence[int]) -> int:
    m = 1
    for s in shape:
        m *= int(s)
    return m

"""A train state cut into per-rank shards (ZeRO / FSDP style): :class:`ShardedTrainState`,
:func:`shard` and :func:`unshard`.

The layout, one rule for every sharded leaf: flatten it, pad it with zeros to a multiple of
the world size ``N`` and keep the ``rank``-th of ``N`` equal chunks, a 1-D tensor of
``ceil(numel / N)`` elements. Which leaves are sharded:

- ``sharding="optimizer"`` (ZeRO-1): the optimizer state's parameter-shaped subtrees (Adam's
  ``mu`` and ``nu``, SGD's momentum trace); parameters stay whole on every rank;
- ``sharding="full"`` (ZeRO-3): the parameters too.

Step counters (0-d ``count``), the model state (batch-norm statistics), the step and the
loss scale stay whole. The padding stays zero through training: its gradient is zero, and
the elementwise optimizers map a zero parameter with a zero gradient and zero moments to
zero. Because every leaf keeps its place in the tree, a decay mask by path (a tree of bools
or a callable on paths) selects the same leaves of the shards as of the whole parameters.

Twin: ``torch.distributed.fsdp.fully_shard``'s flat sharded parameters (FSDP2 shards each
parameter along dim 0; this flattens first so every rank's chunk has one size).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from .. import tree
from .._torch import open_node, pytree
from ..train.state import TrainState
from ..tree import flat as _flat
from ..typing import PyTree, Tensor
from .process import rank, world_size

__all__ = ["SHARDINGS", "ShardedTrainState", "shard", "unshard", "chunk_size", "shard_leaf",
           "check_world"]

#: The shardings a :class:`ShardedTrainState` may carry.
SHARDINGS = ("optimizer", "full")

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ShardedTrainState(TrainState):
    """This rank's share of a :class:`~deepfn.train.TrainState` (made by :func:`shard`).

    The five fields of ``TrainState`` hold this rank's shards (see the module docstring); the
    extra fields are static facts of the layout, kept in the pytree's context (never leaves),
    and stored in checkpoints so a loaded shard knows where it belongs.

    Args:
        sharding: ``"optimizer"`` or ``"full"``.
        world_size: ``N``, the number of ranks the state was cut for.
        rank: the rank whose share this is.
        param_shapes: the whole shape of each parameter leaf, in tree order.
        opt_shapes: per optimizer-state leaf, in tree order: its whole shape when sharded,
            ``None`` when every rank holds it whole.
    """

    sharding: str = "optimizer"
    world_size: int = 1
    rank: int = 0
    param_shapes: tuple = ()
    opt_shapes: tuple = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sharding not in SHARDINGS:
            raise ValueError(f"ShardedTrainState: sharding must be one of {SHARDINGS}; got {self.sharding!r}")
        if isinstance(self.world_size, bool) or not isinstance(self.world_size, int) or self.world_size < 1:
            raise ValueError(f"ShardedTrainState: world_size must be a positive int; got {self.world_size!r}")
        if not (isinstance(self.rank, int) and 0 <= self.rank < self.world_size):
            raise ValueError(f"ShardedTrainState: rank must be in [0, {self.world_size}); got {self.rank!r}")
        # Checkpoints bring shapes back as lists or tuples of ints: keep one hashable form.
        object.__setattr__(self, "param_shapes", tuple(tuple(s) for s in self.param_shapes))
        object.__setattr__(self, "opt_shapes", tuple(None if s is None else tuple(s) for s in self.opt_shapes))


_TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainState))
_LAYOUT_FIELDS = ("sharding", "world_size", "rank", "param_shapes", "opt_shapes")


def _flatten(obj: ShardedTrainState) -> tuple[list[Any], tuple]:
    present = tuple(n for n in _TRAIN_FIELDS if getattr(obj, n) is not None)
    return [getattr(obj, n) for n in present], (present, *(getattr(obj, n) for n in _LAYOUT_FIELDS))


def _unflatten(children: Any, context: tuple) -> ShardedTrainState:
    # Bypasses __init__ like tree.register_dataclass: vmap and friends rebuild nodes around
    # placeholders that validation would reject.
    obj = object.__new__(ShardedTrainState)
    present, *layout = context
    values = dict(zip(present, children, strict=True))
    for n in _TRAIN_FIELDS:
        object.__setattr__(obj, n, values.get(n))
    for n, v in zip(_LAYOUT_FIELDS, layout, strict=True):
        object.__setattr__(obj, n, v)
    return obj


def _flatten_with_keys(obj: ShardedTrainState) -> tuple[list[tuple[Any, Any]], tuple]:
    children, context = _flatten(obj)
    return [(pytree.GetAttrKey(n), c) for n, c in zip(context[0], children, strict=True)], context


pytree.register_pytree_node(ShardedTrainState, _flatten, _unflatten,
                            serialized_type_name=f"{ShardedTrainState.__module__}.ShardedTrainState",
                            flatten_with_keys_fn=_flatten_with_keys)


def chunk_size(numel: int, n: int) -> int:
    """Elements per rank of a leaf of ``numel`` elements over ``n`` ranks: ``ceil(numel / n)``."""
    return -(-numel // n)


def shard_leaf(x: Tensor, r: int, n: int) -> Tensor:
    """Rank ``r``'s chunk ``[ceil(numel / n)]`` of ``x`` flattened and zero-padded (a new tensor)."""
    c = chunk_size(x.numel(), n)
    flat = x.reshape(-1)
    end = min((r + 1) * c, x.numel())
    part = flat[r * c:end] if r * c < end else flat[:0]
    if part.numel() == c:
        return part.clone()
    return torch.cat([part, part.new_zeros(c - part.numel())])


def check_world(where: str, state: ShardedTrainState) -> None:
    """Raise ``ValueError`` unless ``state`` was cut for this job's world size and this rank."""
    n, r = world_size(), rank()
    if state.world_size != n:
        raise ValueError(f"{where}: the sharded state was cut for {state.world_size} ranks but this job has "
                         f"{n}; resume on another world size from a full checkpoint (distributed.unshard, "
                         f"then checkpoint.save, then distributed.shard on the new job)")
    if state.rank != r:
        raise ValueError(f"{where}: this is rank {r} but the sharded state is rank {state.rank}'s share "
                         f"(load each rank's own checkpoint file)")


def _param_like(node: Any, spec: Any, shapes: list[Shape]) -> list[bool]:
    """Per leaf of ``node`` (tree order): whether it lies in a subtree shaped like the params."""
    leaves, node_spec = _flat.flatten(node)
    if node_spec == spec and [tuple(x.shape) if isinstance(x, torch.Tensor) else None for x in leaves] == shapes:
        return [True] * len(leaves)
    if isinstance(node, torch.Tensor):
        return [False]
    if type(node) is dict:
        return [f for v in node.values() for f in _param_like(v, spec, shapes)]
    opened = open_node(node)
    if opened is None:
        return [False]
    return [f for child in opened[0] for f in _param_like(child, spec, shapes)]


def shard(train_state: TrainState, sharding: str) -> ShardedTrainState:
    """This rank's share of ``train_state``, which every rank holds whole before the call.

    Args:
        train_state: a full :class:`~deepfn.train.TrainState` (the same values on every rank,
            e.g. after ``distributed.broadcast``).
        sharding: ``"optimizer"`` (ZeRO-1: the optimizer state is sharded) or ``"full"``
            (ZeRO-3: parameters and optimizer state).

    Returns:
        A :class:`ShardedTrainState` for this rank; ``make_train_step(..., sharding=sharding)``
        steps it. Sharded leaves are new tensors; whole ones are the input's own.

    Raises:
        ValueError: ``sharding`` is not one of ``"optimizer"``, ``"full"``.
        TypeError: ``train_state`` is not a ``TrainState``, or is sharded already.
    """
    fn = "deepfn.distributed.shard"
    if isinstance(train_state, ShardedTrainState):
        raise TypeError(f"{fn}: the train state is sharded already (sharding={train_state.sharding!r}, "
                        f"{train_state.world_size} ranks); shard a full TrainState once "
                        f"(distributed.unshard gives the full one back)")
    if not isinstance(train_state, TrainState):
        raise TypeError(f"{fn}: expected a deepfn.train.TrainState; got {type(train_state).__name__}")
    if sharding not in SHARDINGS:
        raise ValueError(f"{fn}: sharding must be one of {SHARDINGS}; got {sharding!r}")
    n, r = world_size(), rank()
    p_leaves, p_spec = _flat.flatten(train_state.params)
    shapes = [tuple(x.shape) if isinstance(x, torch.Tensor) else None for x in p_leaves]
    if any(s is None for s in shapes):
        raise TypeError(f"{fn}: every parameter leaf must be a tensor; got {[type(x).__name__ for x in p_leaves]}")
    o_leaves, o_spec = _flat.flatten(train_state.opt_state)
    flags = _param_like(train_state.opt_state, p_spec, shapes)
    opt_shapes = tuple(tuple(x.shape) if f else None for x, f in zip(o_leaves, flags, strict=True))
    opt_state = _flat.unflatten(o_spec, [shard_leaf(x, r, n) if f else x
                                         for x, f in zip(o_leaves, flags, strict=True)])
    params = train_state.params
    if sharding == "full":
        params = _flat.unflatten(p_spec, [shard_leaf(x, r, n) for x in p_leaves])
    return ShardedTrainState(params, train_state.state, opt_state, train_state.step, train_state.loss_scale,
                             sharding=sharding, world_size=n, rank=r, param_shapes=tuple(shapes),
                             opt_shapes=opt_shapes)


def unshard(sharded_state: ShardedTrainState, bucket_mb: float = 25.0) -> TrainState:
    """The full :class:`~deepfn.train.TrainState` on every rank (a collective: call it on all).

    Args:
        sharded_state: this rank's :class:`ShardedTrainState`.
        bucket_mb: the size in MiB of each all-gather's buffer.

    Returns:
        A ``TrainState`` equal to the one :func:`shard` was given, advanced by the steps taken;
        ``checkpoint.save`` of it writes a file that a single process loads.

    Raises:
        TypeError: ``sharded_state`` is not a ``ShardedTrainState``.
        ValueError: it was cut for another world size or is another rank's share.
    """
    from .shard_collectives import all_gather_leaves

    fn = "deepfn.distributed.unshard"
    if not isinstance(sharded_state, ShardedTrainState):
        raise TypeError(f"{fn}: expected a ShardedTrainState (from distributed.shard); "
                        f"got {type(sharded_state).__name__}, which is not sharded")
    check_world(fn, sharded_state)
    params = sharded_state.params
    if sharded_state.sharding == "full":
        leaves, spec = _flat.flatten(params)
        params = _flat.unflatten(spec, all_gather_leaves(leaves, list(sharded_state.param_shapes), bucket_mb))
    o_leaves, o_spec = _flat.flatten(sharded_state.opt_state)
    picked = [i for i, s in enumerate(sharded_state.opt_shapes) if s is not None]
    whole = all_gather_leaves([o_leaves[i] for i in picked],
                              [sharded_state.opt_shapes[i] for i in picked], bucket_mb)
    out = list(o_leaves)
    for i, x in zip(picked, whole, strict=True):
        out[i] = x
    return TrainState(params, sharded_state.state, _flat.unflatten(o_spec, out), sharded_state.step,
                      sharded_state.loss_scale)


def shard_bytes(sharded_state: ShardedTrainState) -> dict[str, int]:
    """Bytes this rank holds of ``params`` and ``opt_state`` (for memory reports)."""
    def nbytes(t: PyTree) -> int:
        return sum(x.numel() * x.element_size() for x in tree.leaves(t) if isinstance(x, torch.Tensor))
    return {"params": nbytes(sharded_state.params), "opt_state": nbytes(sharded_state.opt_state)}

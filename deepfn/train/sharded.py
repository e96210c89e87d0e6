"""The train step of sharded data parallel (``make_train_step(..., sharding=...)``): ZeRO-1
(``"optimizer"``) and ZeRO-3 (``"full"``) over a :class:`~deepfn.distributed.ShardedTrainState`.

One update, in order (compare the reference :func:`deepfn.train.step.build_train_step`; steps 1
to 3 are :func:`deepfn.train.sharded_local.chunk_gradients`, 4 and 5 ``_unscale_and_clip``, 5 and
6 ``_update_chunks``):

1. ``"full"``: nothing yet (step 2 gathers one unit at a time); ``"full"`` with
   ``per_unit=False``, on tensors that are not plain, or compiled without a traceable
   all-gather (the seam's hook off): all-gather the parameter shards into whole parameters
   (bucketed); ``"optimizer"``: every rank holds them whole already;
2. forward and gradient of this rank's micro-batches, as the reference step takes them
   (the *local* part: compiled with ``compile=True``). ``"full"`` eagerly: the model reads its
   parameters through :class:`~deepfn.distributed.shard_units.LazyParams`, so each unit (a
   layer, a transformer block, an embedding: :func:`~deepfn.distributed.shard_units.plan_units`)
   is all-gathered when read, freed after its forward, gathered again in backward when first
   needed and its gradient reduce-scattered as soon as its backward is done
   (:mod:`~deepfn.distributed.shard_gather`, FSDP's per-block schedule); under a policy the
   chunks are cast before the gather. ``"full"`` compiled: the same schedule inside the
   compiled forward and backward graphs (:mod:`~deepfn.distributed.shard_gather_compiled`,
   SimpleFSDP's: each unit's gather traced where the model reads it, recomputed in backward
   by a selective checkpoint policy, its gradient reduce-scattered in the backward graph),
   the gradient taken by ``torch.autograd`` through AOTAutograd's backward graph;
3. reduce-scatter the mean gradient: each rank keeps its chunk of every leaf; the whole
   gradients and (``"full"``) the whole parameters are dropped here. Eagerly with
   ``"optimizer"``, the last micro-batch's gradients are reduce-scattered bucket by bucket
   during its backward pass, each whole gradient freed once its bucket is sent (FSDP's
   overlap: :mod:`~deepfn.distributed.shard_overlap`); ``"full"`` per unit did it in step 2;
4. unscale; one small all-reduce sums, over ranks, the squares of the gradient chunks, their
   count of non-finite entries, the loss and the accuracy: the global norm for clipping, a
   finite check every rank agrees on (a skipped step is skipped everywhere) and the metrics;
5. clip the chunks by the global norm, and run the optimizer on this rank's chunks of
   parameters and optimizer state (the update compiled too with ``compile=True``);
6. ``"optimizer"``: all-gather the updated chunks into whole parameters.

The collectives (steps 1, 3, 4, 6) run eagerly between the compiled pieces: they are
``torch.distributed``'s own ``all_gather_single``, ``reduce_scatter_single`` and
``all_reduce``, never differentiated; only compiled ``"full"`` per unit gathers and
reduce-scatters inside its graphs (a functional collective the compiler traces). The optimizer must be elementwise (SGD, Adam, AdamW,
their chains and schedules): a transformation that needs the whole tree
(``optim.clip_by_global_norm`` inside the chain) is refused; use ``clip_norm=`` instead.

Memory per rank: ``"optimizer"`` keeps 1/N of the optimizer state; ``"full"`` keeps 1/N of the
parameters, gradients and optimizer state, and about one unit's whole parameters and
gradients at a time on top, eager and compiled (``per_unit=False``: the whole parameters
and gradients while this rank's forward and backward run).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import optim
from .._torch import foreach, foreach_usable
from ..amp import NoOpLossScale, Policy
from ..distributed.shard_collectives import all_gather_leaves, all_reduce_sum
from ..distributed.sharded_state import SHARDINGS, ShardedTrainState, check_world, shard_leaf
from ..tree import flat as _flat
from ..typing import Block, Key, PyTree, Tensor
from .compile import compiled
from .donate import make_donated_update
from .finite import keep_if, readable_on_host
from .sharded_local import chunk_gradients
from .state import TrainState

__all__ = ["build_sharded_train_step", "check_elementwise"]


def check_elementwise(fn: str, optimizer: Any) -> None:
    """Raise ``ValueError`` when ``optimizer`` holds a transformation that needs the whole tree."""
    if getattr(optimizer.update, "whole_tree", False):
        raise ValueError(f"{fn}: sharded steps run the optimizer on each rank's chunk of every leaf, so it must "
                         f"be elementwise; this optimizer holds optim.clip_by_global_norm, which needs the "
                         f"whole gradient tree: drop it from the chain and pass make_train_step(clip_norm=...) "
                         f"(the global norm across shards)")


def build_sharded_train_step(model: Block, loss_fn: Callable[[Tensor, Any], Tensor], optimizer: Any,
                             sharding: str, *, policy: Policy | None = None, accumulation_steps: int = 1,
                             clip_norm: float | None = None, compile: bool = False, lr: Any = None,
                             ignore_index: int | None = None, donate: bool = False,
                             bucket_mb: float = 25.0, per_unit: bool = True) -> Callable:
    """``step(sharded_state, (inputs, labels), key) -> (sharded_state, metrics)`` (see the module
    docstring); the options are :func:`~deepfn.train.make_train_step`'s. ``per_unit=False``
    makes a ``"full"`` step gather all the parameters at once before its forward pass, eager
    or compiled (the benchmark compares the two)."""
    fn = "deepfn.train.make_train_step"
    if sharding not in SHARDINGS:
        raise ValueError(f"{fn}: sharding must be None or one of {SHARDINGS}; got {sharding!r}")
    check_elementwise(fn, optimizer)
    grads_of = chunk_gradients(model, loss_fn, policy, sharding, accumulation_steps=accumulation_steps,
                               ignore_index=ignore_index, bucket_mb=bucket_mb, compile=compile,
                               per_unit=per_unit, fn=fn)
    reference = _shard_update(optimizer)
    update = make_donated_update(optimizer, reference) if donate else reference
    run_update = compiled(update, None, f"{fn}: sharded step (update)", training=False) if compile else update

    def step(ts: ShardedTrainState, batch: tuple[Any, Any], key: Key | None):
        _check_state(fn, sharding, ts)
        scaler = ts.loss_scale if ts.loss_scale is not None else NoOpLossScale()
        g_chunks, state, loss, acc = grads_of(ts, batch, key, scaler)                             # 1-3
        g_tree, totals, norm, ok = _unscale_and_clip(scaler, ts, g_chunks, loss, acc, clip_norm)  # 4-5
        params, opt_state, state = _update_chunks(run_update, ts, g_tree, state, ok, bucket_mb)   # 5-6
        metrics = _metrics(ts, totals, norm, ok, acc is not None, lr)
        new_scale = None
        if ts.loss_scale is not None:
            grads_ok = totals[1] == 0
            metrics["loss_scale"], metrics["grads_finite"] = scaler.loss_scale, grads_ok
            new_scale = scaler.adjust(grads_ok)
        return ShardedTrainState(params, state, opt_state, ts.step + 1, new_scale, sharding=ts.sharding,
                                 world_size=ts.world_size, rank=ts.rank, param_shapes=ts.param_shapes,
                                 opt_shapes=ts.opt_shapes), metrics

    return step


def _check_state(fn: str, sharding: str, ts: Any) -> None:
    """Raise unless ``ts`` is a ``ShardedTrainState`` sharded as the step, for this process group."""
    if not isinstance(ts, ShardedTrainState):
        raise TypeError(f"{fn}: a step made with sharding={sharding!r} needs this rank's ShardedTrainState "
                        f"(distributed.shard(train_state, {sharding!r})); got {type(ts).__name__}")
    if ts.sharding != sharding:
        raise ValueError(f"{fn}: the step was made with sharding={sharding!r} but the state is sharded "
                         f"with {ts.sharding!r}")
    check_world(f"{fn}: step", ts)


def _unscale_and_clip(scaler: Any, ts: ShardedTrainState, g_chunks: list[Tensor], loss: Tensor,
                      acc: Tensor | None, clip_norm: float | None) -> tuple[PyTree, Tensor, Tensor, Tensor]:
    """Steps 4 and 5's clipping: the unscaled (and clipped) gradient chunks as a tree like the
    parameters, the all-reduced ``[sum of squares, non-finite count, loss, accuracy]`` float64
    ``[4]`` (:func:`_local_totals`), the global norm and whether the step is finite (0-d bool)."""
    spec = _flat.flatten(ts.params)[1]
    g_tree = scaler.unscale(_flat.unflatten(spec, g_chunks))
    g_chunks = _flat.flatten(g_tree)[0]
    totals = all_reduce_sum(_local_totals(g_chunks, loss, acc))
    norm, ok = totals[0].sqrt(), (totals[1] == 0) & torch.isfinite(totals[2])
    if clip_norm is not None:
        coef = torch.clamp(clip_norm / (norm + 1e-6), max=1.0)
        g_tree = _flat.unflatten(spec, [g * coef.to(g.dtype) for g in g_chunks])
    return g_tree, totals, norm, ok


def _update_chunks(run_update: Callable, ts: ShardedTrainState, g_tree: PyTree, state: PyTree, ok: Tensor,
                   bucket_mb: float) -> tuple[PyTree, PyTree, PyTree]:
    """Steps 5 and 6: the optimizer on this rank's chunks; ``"optimizer"`` then all-gathers the
    updated chunks into whole parameters. Returns ``(params, opt_state, state)`` as ``ts`` holds them."""
    p_leaves, p_spec = _flat.flatten(ts.params)
    p_chunks = (p_leaves if ts.sharding == "full"
                else [shard_leaf(x, ts.rank, ts.world_size) for x in p_leaves])
    chunk_ts = TrainState(_flat.unflatten(p_spec, p_chunks), ts.state, ts.opt_state)
    new_chunks, opt_state, state = run_update(chunk_ts, g_tree, state, ok)
    if ts.sharding == "full":
        return new_chunks, opt_state, state
    if readable_on_host(ok) and not bool(ok):
        return ts.params, opt_state, state   # a skipped step: the whole parameters are as they were
    whole = all_gather_leaves(_flat.flatten(new_chunks)[0], list(ts.param_shapes), bucket_mb)
    return _flat.unflatten(p_spec, whole), opt_state, state


def _metrics(ts: ShardedTrainState, totals: Tensor, norm: Tensor, ok: Tensor, has_accuracy: bool,
             lr: Any) -> dict[str, Tensor]:
    """The reference step's metrics, from the totals over ranks (loss and accuracy: their mean)."""
    n = ts.world_size
    grad_norm = norm.to(torch.float32)
    metrics = {"loss": (totals[2] / n).to(torch.float32), "grad_norm": grad_norm}
    if has_accuracy:
        metrics["accuracy"] = (totals[3] / n).to(torch.float32)
    if lr is not None:
        rate = lr(ts.step) if callable(lr) else lr
        metrics["lr"] = torch.as_tensor(rate, dtype=torch.float32, device=grad_norm.device)
    metrics["nonfinite"] = ~ok
    return metrics

def _local_totals(chunks: list[Tensor], loss: Tensor, acc: Tensor | None) -> Tensor:
    """``[sum of squares, non-finite count, loss, accuracy]`` of this rank in float64, summed
    over ranks by one all-reduce. The squares come from per-leaf norms in the leaves' dtype
    (``tree.global_norm``'s arithmetic, one foreach kernel); an inf or NaN makes its leaf's
    norm non-finite, so the leaves are searched only then (finite values whose norm
    overflowed are not counted, as the reference step does not count them)."""
    device = loss.device
    floats = [g for g in chunks if g.is_floating_point() and g.numel()]
    zero = torch.zeros((), dtype=torch.float64, device=device)
    squares, bad = zero, zero
    if floats:
        norms = foreach("norm", floats, 2.0) if foreach_usable(floats) else [
            torch.linalg.vector_norm(g, 2.0) for g in floats]
        norms = torch.stack([x.double() for x in norms])
        squares = norms.square().sum()
        if not bool(torch.isfinite(norms).all()):
            bad = torch.stack([(~torch.isfinite(g)).sum() for g in floats]).sum().double()
    acc = acc.double() if acc is not None else zero
    return torch.stack([squares, bad, loss.double(), acc])


def _shard_update(optimizer: Any) -> Callable:
    """``update(chunk_ts, grads, new_state, ok) -> (params, opt_state, state)`` on chunks: the
    reference step's update (``ok`` false keeps the old trees)."""
    fresh = bool(getattr(optimizer.update, "fresh", False))

    def update(ts: TrainState, grads: PyTree, new_state: PyTree, ok: Tensor):
        updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
        params = optim.apply_updates(ts.params, updates, donate_updates=fresh)
        return keep_if(ok, (params, opt_state, new_state), (ts.params, ts.opt_state, ts.state))

    return update

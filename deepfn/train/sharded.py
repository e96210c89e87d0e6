"""The train step of sharded data parallel (``make_train_step(..., sharding=...)``): ZeRO-1
(``"optimizer"``) and ZeRO-3 (``"full"``) over a :class:`~deepfn.distributed.ShardedTrainState`.

One update, in order (compare the reference :func:`deepfn.train.step.build_train_step`):

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

from .. import optim, tree
from .._torch import foreach, foreach_usable
from ..amp import NoOpLossScale, Policy
from ..distributed.process import world_size
from ..distributed.shard_collectives import (
    all_gather_leaves,
    all_reduce_sum,
    reduce_scatter_mean_leaves,
)
from ..distributed.shard_gather import grad_per_unit
from ..distributed.shard_gather_compiled import (
    compiled_gather_available,
    grad_of_chunks,
    objective_on_chunks,
)
from ..distributed.shard_overlap import grad_and_reduce_scatter_mean
from ..distributed.shard_units import plan_units
from ..distributed.sharded_state import SHARDINGS, ShardedTrainState, check_world, shard_leaf
from ..tree import flat as _flat
from ..typing import Block, Key, PyTree, Tensor
from .compile import compiled
from .donate import make_donated_update
from .finite import keep_if, readable_on_host
from .grad_engines import AUTOGRAD, accumulate_micro_batch, choose_engine
from .objective import accuracy, forward, make_objective, micro_batch, micro_key
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
    k = accumulation_steps
    objective = make_objective(model, loss_fn, policy)

    def local(params: PyTree, state: PyTree, inputs: Any, labels: Any, key: Key | None, scaler: Any):
        """This rank's mean gradient over its micro-batches, new model state, loss and accuracy."""
        engine = choose_engine(params, None)
        grads, losses, accs = None, [], []
        for i in range(k):
            x, y = micro_batch(inputs, k, i), micro_batch(labels, k, i)
            grads, (_, (loss, logits, state)) = accumulate_micro_batch(
                engine, objective, objective, params, (state, x, y, micro_key(key, k, i), scaler),
                grads, last=i == k - 1, k=k)
            losses.append(loss)
            accs.append(accuracy(logits, y, ignore_index))
        if k > 1:   # the reference step's division: the whole batch's gradient of a mean loss
            grads = tree.map(lambda g: g / k, grads)
        acc = torch.stack(accs).mean() if accs[0] is not None else None
        return grads, state, torch.stack(losses).mean(), acc

    def local_chunks(params: PyTree, state: PyTree, inputs: Any, labels: Any, key: Key | None, scaler: Any):
        """``local`` followed by the reduce-scatter, eagerly: the last micro-batch's gradients
        are reduce-scattered during its backward pass (:mod:`deepfn.distributed.shard_overlap`)."""
        if choose_engine(params, None) != AUTOGRAD:
            grads, state, loss, acc = local(params, state, inputs, labels, key, scaler)
            return reduce_scatter_mean_leaves(_flat.flatten(grads)[0], bucket_mb), state, loss, acc
        summed, losses, accs = None, [], []
        for i in range(k):
            x, y = micro_batch(inputs, k, i), micro_batch(labels, k, i)
            args = (state, x, y, micro_key(key, k, i), scaler)
            if i < k - 1:
                summed, (_, (loss, logits, state)) = accumulate_micro_batch(
                    AUTOGRAD, objective, objective, params, args, summed, last=False, k=k)
            else:
                chunks, (_, (loss, logits, state)) = grad_and_reduce_scatter_mean(
                    objective, params, *args, accumulated=None if summed is None else _flat.flatten(summed)[0],
                    divide_by=k, bucket_mb=bucket_mb)
            losses.append(loss)
            accs.append(accuracy(logits, y, ignore_index))
        acc = torch.stack(accs).mean() if accs[0] is not None else None
        return chunks, state, torch.stack(losses).mean(), acc

    def unit_objective(params: PyTree, state: PyTree, inputs: Any, labels: Any, key: Key | None, scaler: Any):
        """``objective`` on parameters gathered in the policy's compute dtypes already."""
        if policy is not None:
            inputs = policy.cast_to_compute(inputs)
        logits, new_state = forward(model, None, params, state, inputs, key, True)
        if policy is not None:
            logits = policy.cast_to_output(logits)
            new_state = tree.map(lambda n, o: n.to(o.dtype), new_state, state)
        loss = loss_fn(logits, labels).float()
        return scaler.scale(loss), (loss, logits, new_state)

    runners: dict[Any, Callable] = {}   # the compiled objective on chunks, per layout

    def per_unit_chunks(chunks: list[Tensor], spec: Any, shapes: list, plan: Any, state: PyTree, inputs: Any,
                        labels: Any, key: Key | None, scaler: Any):
        """``local`` followed by the reduce-scatter, one unit at a time (``"full"``): eagerly
        (:func:`grad_per_unit`) or in compiled graphs (:func:`objective_on_chunks`)."""
        # The policy's dtype per leaf, from stand-ins of the whole shapes (keep_float32 reads them).
        stand_ins = _flat.unflatten(spec, [torch.empty(s, dtype=c.dtype, device="meta")
                                           for c, s in zip(chunks, shapes, strict=True)])
        compute = stand_ins if policy is None else policy.cast_to_compute(stand_ins)
        dtypes = [x.dtype for x in _flat.flatten(compute)[0]]
        if compile:
            layout = (repr(plan.root), tuple(map(tuple, shapes)), tuple(dtypes), world_size())
            if layout not in runners:
                runners[layout] = compiled(objective_on_chunks(unit_objective, plan, shapes, dtypes), None,
                                           f"{fn}: sharded step (forward and backward, one unit at a time)")
            run = runners[layout]
        summed, losses, accs = None, [], []
        for i in range(k):
            x, y = micro_batch(inputs, k, i), micro_batch(labels, k, i)
            args = (state, x, y, micro_key(key, k, i), scaler)
            if compile:
                g, (_, (loss, logits, state)) = grad_of_chunks(run, chunks, *args, divide_by=k)
            else:
                g, (_, (loss, logits, state)) = grad_per_unit(unit_objective, chunks, shapes, plan, dtypes, *args,
                                                              divide_by=k)
            summed = g if summed is None else [a + b for a, b in zip(summed, g, strict=True)]
            losses.append(loss)
            accs.append(accuracy(logits, y, ignore_index))
        acc = torch.stack(accs).mean() if accs[0] is not None else None
        return summed, state, torch.stack(losses).mean(), acc

    reference = _shard_update(optimizer)
    update = make_donated_update(optimizer, reference) if donate else reference
    run_local = compiled(local, None, f"{fn}: sharded step (forward and backward)") if compile else local
    run_update = compiled(update, None, f"{fn}: sharded step (update)", training=False) if compile else update

    def step(ts: ShardedTrainState, batch: tuple[Any, Any], key: Key | None):
        if not isinstance(ts, ShardedTrainState):
            raise TypeError(f"{fn}: a step made with sharding={sharding!r} needs this rank's ShardedTrainState "
                            f"(distributed.shard(train_state, {sharding!r})); got {type(ts).__name__}")
        if ts.sharding != sharding:
            raise ValueError(f"{fn}: the step was made with sharding={sharding!r} but the state is sharded "
                             f"with {ts.sharding!r}")
        check_world(f"{fn}: step", ts)
        n, r = ts.world_size, ts.rank
        scaler = ts.loss_scale if ts.loss_scale is not None else NoOpLossScale()
        p_leaves, p_spec = _flat.flatten(ts.params)
        shapes = list(ts.param_shapes)
        plan = None
        if (sharding == "full" and per_unit and choose_engine(ts.params, None) == AUTOGRAD
                and (not compile or compiled_gather_available())):
            plan = plan_units(ts.params) if all(x.is_floating_point() for x in p_leaves) else None
        if plan is not None:   # ZeRO-3: one unit's whole parameters at a time
            whole = None
            g_chunks, state, loss, acc = per_unit_chunks(p_leaves, p_spec, shapes, plan, ts.state, batch[0],
                                                         batch[1], key, scaler)
        else:
            whole = p_leaves if sharding == "optimizer" else all_gather_leaves(p_leaves, shapes, bucket_mb)
            if compile:
                grads, state, loss, acc = run_local(_flat.unflatten(p_spec, whole), ts.state, batch[0],
                                                    batch[1], key, scaler)
                g_chunks = reduce_scatter_mean_leaves(_flat.flatten(grads)[0], bucket_mb)
                del grads
            else:
                g_chunks, state, loss, acc = local_chunks(_flat.unflatten(p_spec, whole), ts.state, batch[0],
                                                          batch[1], key, scaler)
        del whole   # ZeRO-3: the whole parameters live only through the forward and backward pass
        g_tree = scaler.unscale(_flat.unflatten(p_spec, g_chunks))
        g_chunks = _flat.flatten(g_tree)[0]
        totals = all_reduce_sum(_local_totals(g_chunks, loss, acc))
        norm, ok = totals[0].sqrt(), (totals[1] == 0) & torch.isfinite(totals[2])
        if clip_norm is not None:
            coef = torch.clamp(clip_norm / (norm + 1e-6), max=1.0)
            g_tree = _flat.unflatten(p_spec, [g * coef.to(g.dtype) for g in g_chunks])
        p_chunks = (p_leaves if sharding == "full"
                    else [shard_leaf(x, r, n) for x in p_leaves])
        chunk_ts = TrainState(_flat.unflatten(p_spec, p_chunks), ts.state, ts.opt_state)
        new_chunks, opt_state, state = run_update(chunk_ts, g_tree, state, ok)
        params = new_chunks
        if sharding == "optimizer" and readable_on_host(ok) and not bool(ok):
            params = ts.params   # a skipped step: the whole parameters are as they were
        elif sharding == "optimizer":
            params = _flat.unflatten(p_spec, all_gather_leaves(_flat.flatten(new_chunks)[0], shapes, bucket_mb))
        grad_norm = norm.to(torch.float32)
        metrics = {"loss": (totals[2] / n).to(torch.float32), "grad_norm": grad_norm}
        if acc is not None:
            metrics["accuracy"] = (totals[3] / n).to(torch.float32)
        if lr is not None:
            rate = lr(ts.step) if callable(lr) else lr
            metrics["lr"] = torch.as_tensor(rate, dtype=torch.float32, device=grad_norm.device)
        metrics["nonfinite"] = ~ok
        new_scale = None
        if ts.loss_scale is not None:
            grads_ok = totals[1] == 0
            metrics["loss_scale"], metrics["grads_finite"] = scaler.loss_scale, grads_ok
            new_scale = scaler.adjust(grads_ok)
        return ShardedTrainState(params, state, opt_state, ts.step + 1, new_scale, sharding=ts.sharding,
                                 world_size=n, rank=r, param_shapes=ts.param_shapes,
                                 opt_shapes=ts.opt_shapes), metrics

    return step


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

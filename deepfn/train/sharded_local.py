"""The local part of a sharded train step (steps 1 to 3 of :mod:`deepfn.train.sharded`): this
rank's chunk of the mean gradient over ranks.

:func:`chunk_gradients` builds ``grads_of(sharded_state, (inputs, labels), key, scaler) ->
(chunks, state, loss, accuracy)``: one 1-D chunk per parameter leaf (tree order) of the mean over
ranks of each rank's mean gradient over its micro-batches, the model state after them, and this
rank's mean loss and accuracy. Three ways to the same numbers:

- per unit (``"full"`` on plain floating tensors; compiled, with a traceable all-gather): each
  unit's parameters are all-gathered when the model reads them and its gradient
  reduce-scattered after its backward (:func:`_per_unit`);
- whole, compiled: the whole parameters (all-gathered for ``"full"``) through the compiled
  reference :func:`_local`, then one bucketed reduce-scatter;
- whole, eager: the same, the last micro-batch's gradients reduce-scattered bucket by bucket
  during its backward pass (:func:`_overlapped`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import tree
from ..amp import Policy
from ..distributed.process import world_size
from ..distributed.shard_collectives import all_gather_leaves, reduce_scatter_mean_leaves
from ..distributed.shard_gather import grad_per_unit
from ..distributed.shard_gather_compiled import (
    compiled_gather_available,
    grad_of_chunks,
    objective_on_chunks,
)
from ..distributed.shard_overlap import grad_and_reduce_scatter_mean
from ..distributed.shard_units import plan_units
from ..tree import flat as _flat
from ..typing import Block, Key, PyTree, Tensor
from .compile import compiled
from .grad_engines import AUTOGRAD, accumulate_micro_batch, choose_engine
from .objective import accuracy, forward, make_objective, micro_batch, micro_key

__all__ = ["chunk_gradients"]

#: ``(grads or chunks, state, loss, accuracy)`` of this rank's micro-batches.
Local = tuple[Any, PyTree, Tensor, Tensor | None]


def chunk_gradients(model: Block, loss_fn: Callable[[Tensor, Any], Tensor], policy: Policy | None, sharding: str,
                    *, accumulation_steps: int, ignore_index: int | None, bucket_mb: float, compile: bool,
                    per_unit: bool, fn: str) -> Callable[..., Local]:
    """``grads_of(ts, batch, key, scaler) -> (chunks, state, loss, accuracy)`` (see the module
    docstring); the options are :func:`~deepfn.train.sharded.build_sharded_train_step`'s."""
    k = accumulation_steps
    objective = make_objective(model, loss_fn, policy)
    local = _local(objective, k, ignore_index)
    run_local = compiled(local, None, f"{fn}: sharded step (forward and backward)") if compile else local
    overlapped = _overlapped(local, objective, k, ignore_index, bucket_mb)
    by_unit = _per_unit(_unit_objective(model, loss_fn, policy), policy, k, ignore_index, compile, fn)

    def grads_of(ts: Any, batch: tuple[Any, Any], key: Key | None, scaler: Any) -> Local:
        p_leaves, p_spec = _flat.flatten(ts.params)
        shapes = list(ts.param_shapes)
        plan = _unit_plan(ts.params, p_leaves, compile) if sharding == "full" and per_unit else None
        if plan is not None:   # ZeRO-3: one unit's whole parameters at a time
            return by_unit(p_leaves, p_spec, shapes, plan, ts.state, batch[0], batch[1], key, scaler)
        # The whole parameters live only through this rank's forward and backward pass.
        whole = p_leaves if sharding == "optimizer" else all_gather_leaves(p_leaves, shapes, bucket_mb)
        if not compile:
            return overlapped(_flat.unflatten(p_spec, whole), ts.state, batch[0], batch[1], key, scaler)
        grads, state, loss, acc = run_local(_flat.unflatten(p_spec, whole), ts.state, batch[0], batch[1], key,
                                            scaler)
        return reduce_scatter_mean_leaves(_flat.flatten(grads)[0], bucket_mb), state, loss, acc

    return grads_of


def _unit_plan(params: PyTree, leaves: list[Any], compile: bool) -> Any:
    """The units to gather one at a time, or None where the per-unit schedule cannot run: tensors
    that are not plain, a leaf that is not floating, or compiled without a traceable all-gather."""
    if choose_engine(params, None) != AUTOGRAD or (compile and not compiled_gather_available()):
        return None
    return plan_units(params) if all(x.is_floating_point() for x in leaves) else None


def _mean_metrics(losses: list[Tensor], accs: list[Tensor | None]) -> tuple[Tensor, Tensor | None]:
    """The mean loss and accuracy over the micro-batches (accuracy None when labels have none)."""
    acc = torch.stack(accs).mean() if accs[0] is not None else None
    return torch.stack(losses).mean(), acc


def _local(objective: Callable, k: int, ignore_index: int | None) -> Callable[..., Local]:
    """``local(params, state, inputs, labels, key, scaler)``: this rank's mean gradient over its
    ``k`` micro-batches (a tree like ``params``), new model state, loss and accuracy."""
    def local(params: PyTree, state: PyTree, inputs: Any, labels: Any, key: Key | None, scaler: Any) -> Local:
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
        return (grads, state, *_mean_metrics(losses, accs))
    return local


def _overlapped(local: Callable[..., Local], objective: Callable, k: int, ignore_index: int | None,
                bucket_mb: float) -> Callable[..., Local]:
    """``local`` followed by the reduce-scatter, eagerly: the last micro-batch's gradients are
    reduce-scattered during its backward pass (:mod:`deepfn.distributed.shard_overlap`)."""
    def local_chunks(params: PyTree, state: PyTree, inputs: Any, labels: Any, key: Key | None,
                     scaler: Any) -> Local:
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
        return (chunks, state, *_mean_metrics(losses, accs))
    return local_chunks


def _unit_objective(model: Block, loss_fn: Callable[[Tensor, Any], Tensor], policy: Policy | None) -> Callable:
    """The step's objective on parameters gathered in the policy's compute dtypes already."""
    def unit_objective(params: PyTree, state: PyTree, inputs: Any, labels: Any, key: Key | None, scaler: Any):
        if policy is not None:
            inputs = policy.cast_to_compute(inputs)
        logits, new_state = forward(model, None, params, state, inputs, key, True)
        if policy is not None:
            logits = policy.cast_to_output(logits)
            new_state = tree.map(lambda n, o: n.to(o.dtype), new_state, state)
        loss = loss_fn(logits, labels).float()
        return scaler.scale(loss), (loss, logits, new_state)
    return unit_objective


def _per_unit(unit_objective: Callable, policy: Policy | None, k: int, ignore_index: int | None, compile: bool,
              fn: str) -> Callable[..., Local]:
    """``per_unit_chunks(chunks, spec, shapes, plan, state, inputs, labels, key, scaler)``: ``local``
    followed by the reduce-scatter, one unit at a time (``"full"``): eagerly
    (:func:`grad_per_unit`) or in compiled graphs (:func:`objective_on_chunks`)."""
    runners: dict[Any, Callable] = {}   # the compiled objective on chunks, per layout

    def per_unit_chunks(chunks: list[Tensor], spec: Any, shapes: list, plan: Any, state: PyTree, inputs: Any,
                        labels: Any, key: Key | None, scaler: Any) -> Local:
        dtypes = _compute_dtypes(policy, chunks, spec, shapes)
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
        return (summed, state, *_mean_metrics(losses, accs))
    return per_unit_chunks


def _compute_dtypes(policy: Policy | None, chunks: list[Tensor], spec: Any, shapes: list) -> list[torch.dtype]:
    """The policy's compute dtype per leaf, from stand-ins of the whole shapes (``keep_float32``
    reads the shapes)."""
    stand_ins = _flat.unflatten(spec, [torch.empty(s, dtype=c.dtype, device="meta")
                                       for c, s in zip(chunks, shapes, strict=True)])
    compute = stand_ins if policy is None else policy.cast_to_compute(stand_ins)
    return [x.dtype for x in _flat.flatten(compute)[0]]

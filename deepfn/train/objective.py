"""What a train step differentiates: the forward pass under a policy, the loss, the
accuracy metric and the micro-batches of gradient accumulation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import random, tree
from ..amp import Policy
from ..typing import Block, Key, Params, State, Tensor

__all__ = ["forward", "make_objective", "with_accuracy", "accuracy", "micro_batch", "micro_key"]


def forward(model: Block, policy: Policy | None, params: Params, state: State, inputs: Any,
            key: Key | None, train: bool) -> tuple[Tensor, State]:
    """``model.apply`` under ``policy``: params and inputs cast to its compute dtype, logits to its
    output dtype, the new state in the old state's dtypes. ``inputs``: a tensor or a tuple."""
    if policy is not None:
        params, inputs = policy.cast_to_compute(params), policy.cast_to_compute(inputs)
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    logits, new_state = model.apply(params, state, *args, key=key, train=train)
    if policy is not None:
        logits = policy.cast_to_output(logits)
        # The state keeps its stored dtypes (fp32 running statistics under a bf16 policy).
        new_state = tree.map(lambda n, o: n.to(o.dtype), new_state, state)
    return logits, new_state


def make_objective(model: Block, loss_fn: Callable[[Tensor, Any], Tensor], policy: Policy | None) -> Callable:
    """``objective(params, state, inputs, labels, key, scaler) -> (scaled loss, (loss, logits, new state))``:
    the function a step differentiates with respect to ``params`` (``loss`` float32, 0-d)."""
    def objective(params, state, inputs, labels, key, scaler):
        logits, new_state = forward(model, policy, params, state, inputs, key, True)
        loss = loss_fn(logits, labels).float()
        return scaler.scale(loss), (loss, logits, new_state)
    return objective


def with_accuracy(objective: Callable, ignore_index: int | None) -> Callable:
    """``objective`` (as :func:`make_objective` makes it) with ``(loss, accuracy, new state)`` as
    its aux instead of ``(loss, logits, new state)``: the accuracy (:func:`accuracy`, or None) is
    computed inside the differentiated function. A compiled forward (``compile="split"``) then
    returns a 0-d tensor instead of the ``[B, ..., C]`` logits, and its argmax runs in the
    compiled kernels instead of eagerly after them."""
    def objective_with_accuracy(params, state, inputs, labels, key, scaler):
        scaled, (loss, logits, new_state) = objective(params, state, inputs, labels, key, scaler)
        return scaled, (loss, accuracy(logits, labels, ignore_index), new_state)
    return objective_with_accuracy


def accuracy(logits: Tensor, labels: Any, ignore_index: int | None = None) -> Tensor | None:
    """Share of ``argmax(logits) == labels`` over the labels that count (not ``ignore_index``);
    a 0-d float32 tensor, or None when ``labels`` are not integer labels of the logits' shape."""
    usable = (isinstance(labels, torch.Tensor) and not labels.is_floating_point()
              and labels.dtype != torch.bool and logits.shape[:-1] == labels.shape)
    if not usable:
        return None
    hit = (logits.argmax(-1) == labels).float()
    if ignore_index is None:
        return hit.mean()
    counted = (labels != ignore_index).float()
    return (hit * counted).sum() / counted.sum().clamp(min=1.0)


def micro_batch(x: Any, k: int, i: int) -> Any:
    """The ``i``-th of ``k`` equal slices of every leaf of ``x`` along its leading axis."""
    return tree.map(lambda t: t[i * (t.shape[0] // k):(i + 1) * (t.shape[0] // k)], x)


def micro_key(key: Key | None, k: int, i: int) -> Key | None:
    """The key of micro-batch ``i`` of ``k``: ``key`` itself when ``k == 1``, else ``fold_in(key, i)``."""
    return key if (k == 1 or key is None) else random.fold_in(key, i)

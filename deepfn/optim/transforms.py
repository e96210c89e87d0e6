"""Small gradient transformations that optimizers chain: decay, momentum, learning rate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from .. import tree
from ..typing import PyTree, Tensor
from . import _ops
from . import _steps as S
from .base import (EmptyState, GradientTransformation, ScalarOrSchedule, check_count,
                   check_same_structure, zero_count)

Mask = PyTree | Callable[[str, Tensor], bool]


def leaf_paths(params: PyTree) -> list[str]:
    """Dotted names of the leaves, in ``tree.leaves`` order (``{"a": {"b": x}} -> ["a.b"]``)."""
    def key_name(k: Any) -> str:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)
    flat, _ = pytree.tree_flatten_with_path(params)
    return [".".join(key_name(k) for k in path) for path, _ in flat]


def resolve_mask(where: str, mask: Mask | None, params: PyTree) -> list[bool]:
    """One bool per leaf: a callable gets ``(path, leaf)``; a tree of bools must match ``params``."""
    leaves = tree.leaves(params)
    if mask is None:
        return [True] * len(leaves)
    if callable(mask):
        return [bool(mask(p, x)) for p, x in zip(leaf_paths(params), leaves, strict=True)]
    check_same_structure(where, "mask", mask, params)
    flags = tree.leaves(mask)
    for f in flags:
        if not isinstance(f, bool):
            raise TypeError(f"{where}: mask leaves must be Python bools (True = decay); got {type(f).__name__} {f!r}")
    return flags


def _value(lr: ScalarOrSchedule, count: Tensor) -> Any:
    return lr(count) if callable(lr) else lr


def _check_rate(where: str, name: str, value: Any) -> None:
    if not callable(value):
        S.check_number(where, name, value, low=0.0)


class ScaleByScheduleState(NamedTuple):
    count: Tensor


def scale_by_learning_rate(lr: ScalarOrSchedule) -> GradientTransformation:
    """``u <- -lr(n) * u`` at the n-th update (``lr`` a float or a schedule ``step -> lr``)."""
    where = "deepfn.optim.scale_by_learning_rate"
    _check_rate(where, "lr", lr)

    def init(params: PyTree) -> ScaleByScheduleState:
        return ScaleByScheduleState(count=zero_count(params))

    def update(updates: PyTree, state: ScaleByScheduleState, params: PyTree = None):
        check_count(where, state.count)
        xs = tree.leaves(updates)
        rate = _value(lr, state.count)
        out = _ops.mul(xs, -rate, _ops.use_foreach(xs))
        return tree.unflatten_leaves(tree.structure(updates), out), ScaleByScheduleState(state.count + 1)

    return GradientTransformation(init, update)


def add_decayed_weights(weight_decay: float = 0.0, mask: Mask | None = None) -> GradientTransformation:
    """``u <- u + weight_decay * p`` for the leaves ``mask`` selects (all when ``None``).

    ``mask`` is a tree of Python bools with the structure of params, or a callable
    ``(path, leaf) -> bool`` with dotted paths such as ``"encoder.norm1.bias"``; True means
    "decay". Choose by name, never by ``ndim``: stacked ensemble parameters gain a leading
    axis, and a rank rule would then decay biases and norms.

    Example:
        >>> no_decay = lambda path, leaf: not path.endswith("bias")
        >>> t = add_decayed_weights(0.1, mask=no_decay)
    """
    where = "deepfn.optim.add_decayed_weights"
    S.check_number(where, "weight_decay", weight_decay, low=0.0)
    if mask is not None and not callable(mask) and not isinstance(mask, (dict, list, tuple)):
        raise TypeError(f"{where}: mask must be a tree of bools or a callable (path, leaf) -> bool; got {type(mask).__name__}")

    def update(updates: PyTree, state: EmptyState, params: PyTree = None):
        if weight_decay == 0.0:
            return updates, state
        if params is None:
            raise ValueError(f"{where}: update needs params (weight decay reads them); got params=None")
        check_same_structure(where, "updates", updates, params)
        flags = resolve_mask(where, mask, params)
        us, ps = tree.leaves(updates), tree.leaves(params)
        idx = [i for i, f in enumerate(flags) if f]
        out = list(us)
        decayed = _ops.add([us[i] for i in idx], [ps[i] for i in idx], _ops.use_foreach(us), alpha=weight_decay)
        for i, d in zip(idx, decayed, strict=True):
            out[i] = d
        return tree.unflatten_leaves(tree.structure(updates), out), state

    return GradientTransformation(lambda params: EmptyState(), update)


class TraceState(NamedTuple):
    count: Tensor
    trace: PyTree


def trace(decay: ScalarOrSchedule, dampening: float = 0.0, nesterov: bool = False) -> GradientTransformation:
    """Heavy-ball momentum with ``torch.optim.SGD``'s numbers; ``decay`` may be a schedule.

    ``buf_0 = g``; ``buf_n = decay * buf_{n-1} + (1 - dampening) * g``; the output is
    ``g + decay * buf_n`` with ``nesterov``, else ``buf_n``.
    """
    where = "deepfn.optim.trace"
    _check_rate(where, "decay", decay)
    S.check_number(where, "dampening", dampening, low=0.0, high=1.0)

    def init(params: PyTree) -> TraceState:
        return TraceState(count=zero_count(params), trace=tree.zeros_like(params))

    def update(updates: PyTree, state: TraceState, params: PyTree = None):
        check_count(where, state.count)
        check_same_structure(where, "updates", updates, state.trace)
        gs, bufs = tree.leaves(updates), tree.leaves(state.trace)
        fe = _ops.use_foreach(gs)
        m = _value(decay, state.count)
        kept = _ops.mul(bufs, m, fe)
        if dampening == 0.0:
            # The buffer starts at zero, so the first step gives 0 * decay + g == g exactly.
            new = _ops.add(kept, gs, fe)
        else:
            # torch's first step copies g undamped: scale by 1 at count 0, (1 - dampening) after.
            first = state.count.new_ones((), dtype=torch.float64)
            scale = torch.where(state.count == 0, first, first * (1.0 - dampening))
            new = _ops.add(kept, _ops.mul(gs, scale, fe), fe)
        if nesterov:
            out = _ops.add(gs, new, fe, alpha=m) if not isinstance(m, torch.Tensor) else _ops.add(gs, _ops.mul(new, m, fe), fe)
        else:
            out = new
        spec = tree.structure(updates)
        return tree.unflatten_leaves(spec, out), TraceState(state.count + 1, tree.unflatten_leaves(spec, new))

    return GradientTransformation(init, update)

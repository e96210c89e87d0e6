"""Small gradient transformations that optimizers chain: decay, momentum, learning rate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .. import tree
from ..tree import flat as _flat
from ..typing import PyTree, Tensor
from . import _ops
from . import _steps as S
from .base import (
    EmptyState,
    GradientTransformation,
    ScalarOrSchedule,
    check_shapes,
    check_specs,
    check_state,
    mark,
    zero_count,
)

__all__ = [
    "ScaleByScheduleState", "TraceState", "add_decayed_weights", "scale_by_learning_rate", "trace",
]

Mask = PyTree | Callable[[str, Tensor], bool]


def resolve_mask(where: str, mask: Mask | None, params: PyTree, leaves: list, spec: Any) -> list[bool]:
    """One bool per leaf: a callable gets ``(path, leaf)``; a tree of bools must match ``params``."""
    if mask is None:
        return [True] * len(leaves)
    if callable(mask):
        return [bool(mask(p, x)) for p, x in zip(_flat.paths(params), leaves, strict=True)]
    flags, mask_spec = _flat.flatten(mask)
    check_specs(where, "mask", mask_spec, spec, mask, params)
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

    def update(updates: PyTree, state: ScaleByScheduleState, params: PyTree = None, *, _owned: bool = False):
        check_state(where, state, ScaleByScheduleState)
        xs, spec = _flat.flatten(updates)
        rate = _value(lr, state.count)
        out = _ops.mul(xs, -rate, _ops.use_foreach(xs), inplace=_owned)
        return _flat.unflatten(spec, out), ScaleByScheduleState(state.count + 1)

    return GradientTransformation(init, mark(update, fresh=True, reuses=True))


def add_decayed_weights(weight_decay: float = 0.0, mask: Mask | None = None) -> GradientTransformation:
    """``u <- u + weight_decay * p`` for the leaves ``mask`` selects (all when ``None``).

    ``mask`` is a tree of Python bools with the structure of params, or a callable
    ``(path, leaf) -> bool`` with dotted paths such as ``"encoder.norm1.bias"``; True means
    "decay". Choose by name, never by ``ndim``: stacked ensemble parameters gain a leading
    axis, and a rank rule would then decay biases and norms.

    Examples:
        >>> no_decay = lambda path, leaf: not path.endswith("bias")
        >>> t = add_decayed_weights(0.1, mask=no_decay)
    """
    where = "deepfn.optim.add_decayed_weights"
    S.check_number(where, "weight_decay", weight_decay, low=0.0)
    if mask is not None and not callable(mask) and not isinstance(mask, (dict, list, tuple)):
        raise TypeError(f"{where}: mask must be a tree of bools or a callable (path, leaf) -> bool; got {type(mask).__name__}")

    def update(updates: PyTree, state: EmptyState, params: PyTree = None, *, _owned: bool = False):
        check_state(where, state, EmptyState)
        if weight_decay == 0.0:
            return updates, state
        if params is None:
            raise ValueError(f"{where}: update needs params (weight decay reads them); got params=None")
        us, spec = _flat.flatten(updates)
        ps, p_spec = _flat.flatten(params)
        check_specs(where, "updates", spec, p_spec, updates, params)
        check_shapes(where, "updates", us, ps, params)
        flags = resolve_mask(where, mask, params, ps, p_spec)
        fe = _ops.use_foreach(us)
        if all(flags):
            return _flat.unflatten(spec, _ops.add(us, ps, fe, alpha=weight_decay, inplace=_owned)), state
        idx = [i for i, f in enumerate(flags) if f]
        out = list(us)
        decayed = _ops.add([us[i] for i in idx], [ps[i] for i in idx], fe, alpha=weight_decay, inplace=_owned)
        for i, d in zip(idx, decayed, strict=True):
            out[i] = d
        return _flat.unflatten(spec, out), state

    return GradientTransformation(lambda params: EmptyState(), mark(update, reuses=True))


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

    def update(updates: PyTree, state: TraceState, params: PyTree = None, *, donate_state: bool = False):
        check_state(where, state, TraceState)
        gs, spec = _flat.flatten(updates)
        bufs, b_spec = _flat.flatten(state.trace)
        check_specs(where, "updates", spec, b_spec, updates, state.trace, "the momentum buffers")
        check_shapes(where, "updates", gs, bufs, state.trace, "the momentum buffers")
        fe = _ops.use_foreach(gs)
        m = _value(decay, state.count)
        # Donated, the buffers are scaled in place (the same kernels, so the same numbers).
        kept = _ops.mul(bufs, m, fe, inplace=donate_state)
        if dampening == 0.0:
            # The buffer starts at zero, so the first step gives 0 * decay + g == g exactly.
            new = _ops.add(kept, gs, fe, inplace=True)
        else:
            # torch's first step copies g undamped: scale by 1 at count 0, (1 - dampening) after.
            first = state.count.new_ones((), dtype=torch.float64)
            scale = torch.where(state.count == 0, first, first * (1.0 - dampening))
            new = _ops.add(kept, _ops.mul(gs, scale, fe), fe, inplace=True)
        if not nesterov:
            out = new
        elif isinstance(m, torch.Tensor):
            out = _ops.add(gs, _ops.mul(new, m, fe), fe)
        else:
            out = _ops.add(gs, new, fe, alpha=m)
        if donate_state and not fe:
            new = _ops.write_back(bufs, new)
            out = new if not nesterov else out
        return _flat.unflatten(spec, out), TraceState(state.count + 1, _flat.unflatten(spec, new))

    # Without nesterov the output is the new buffer, which the state holds too: not fresh.
    return GradientTransformation(init, mark(update, fresh=nesterov, donates=True))

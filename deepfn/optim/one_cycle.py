"""The 1cycle policy (Smith & Topin 2018) as pure schedules. Twin: ``torch.optim.lr_scheduler.OneCycleLR``.

Phases end at ``pct_start*T - 1`` and ``T - 1`` (three-phase: ``pct_start*T - 1``,
``2*pct_start*T - 2``, ``T - 1``); inside a phase ``pct = (n - start) / (end - start)`` and
the value anneals from the phase's start to its end value, exactly as ``OneCycleLR`` does.

Trap: ``OneCycleLR`` defaults to ``cycle_momentum=True``, which *also* rewrites the
optimizer's momentum (SGD; momentum 0.95 appears even on a momentum-less SGD) or Adam's
``beta1`` every step. deepfn never does that behind your back: ``one_cycle`` is the
learning rate only, and ``one_cycle_momentum`` gives the matching momentum values, to pass
as ``sgd(momentum=...)`` or ``adam(betas=(one_cycle_momentum(T), 0.999))`` when you want them.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from . import _steps as S
from .base import Schedule

__all__ = ["one_cycle", "one_cycle_momentum"]

_NAME = "deepfn.optim.one_cycle"


def _anneal(strategy: str, start: float, end: float, pct: Any) -> Any:
    if strategy == "linear":
        return (end - start) * pct + start
    value = end + (start - end) / 2.0 * (S.cos(math.pi * pct) + 1)
    # OneCycleLR's form misses ``start`` by a few ulps at pct == 0; pin it so that
    # ``one_cycle(...)(0) == max_lr / div_factor`` holds exactly.
    return S.where(pct == 0, start, value)


def _phases(name: str, total_steps: Any, pct_start: Any, anneal_strategy: Any,
            three_phase: bool) -> list[float]:
    S.check_int(name, "total_steps", total_steps, low=1)
    S.check_number(name, "pct_start", pct_start, low=0.0, high=1.0)
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError(f"{name}: anneal_strategy must be one of ['cos', 'linear']; got {anneal_strategy!r}")
    if three_phase:
        ends = [float(pct_start * total_steps) - 1, float(2 * pct_start * total_steps) - 2, total_steps - 1.0]
    else:
        ends = [float(pct_start * total_steps) - 1, total_steps - 1.0]
    starts = [0.0, *ends[:-1]]
    if any(e <= s for s, e in zip(starts, ends, strict=False)):
        # OneCycleLR divides by (end - start) here: a zero or negative phase length.
        raise ValueError(f"{name}: pct_start={pct_start!r} with total_steps={total_steps} gives an empty phase "
                         f"(phase ends {ends}); need pct_start * total_steps > 1 and every phase longer than 0")
    return ends


def _cycle(name: str, total_steps: int, ends: list[float], values: list[tuple[float, float]],
           strategy: str) -> Schedule:
    starts = [0.0, *ends[:-1]]

    def schedule(step: Any) -> Any:
        t = S.as_step(name, step)
        message = f"Tried to step {{}} times. The specified number of total steps is {total_steps}"
        if not S.is_tensor(t) or S.concrete(step):
            n = int(step)
            if n > total_steps:
                raise ValueError(f"{name}: " + message.format(n))
        if not S.is_tensor(t):
            for i, (s, e) in enumerate(zip(starts, ends, strict=False)):
                if t <= e or i == len(ends) - 1:
                    return _anneal(strategy, *values[i], (t - s) / (e - s))
        value = None
        for i in reversed(range(len(ends))):
            v = _anneal(strategy, *values[i], (t - starts[i]) / (ends[i] - starts[i]))
            value = v if value is None else torch.where(t <= ends[i], v, value)
        # Under compile or vmap the step's value cannot be read without a graph break,
        # so a step past the end poisons the value with NaN instead of raising.
        return torch.where(t > total_steps, torch.full_like(value, math.nan), value)

    return schedule


def one_cycle(max_lr: float, total_steps: int, pct_start: float = 0.3, anneal_strategy: str = "cos",
              div_factor: float = 25.0, final_div_factor: float = 1e4, three_phase: bool = False) -> Schedule:
    """``OneCycleLR``'s learning rate after n scheduler steps; ``one_cycle(...)(0) == max_lr / div_factor``.

    From ``initial = max_lr / div_factor`` up to ``max_lr``, then down to
    ``initial / final_div_factor`` (three-phase: back to ``initial`` first). ``cos``:
    ``end + (start - end) / 2 * (cos(pi * pct) + 1)``; ``linear``: ``start + (end - start) * pct``.

    Raises:
        ValueError: bad arguments, or (eagerly) a step past ``total_steps``, with
            ``OneCycleLR``'s "Tried to step ... times" message. A tensor step under
            ``torch.compile`` or ``vmap`` cannot raise without a graph break; there the
            value past ``total_steps`` is NaN, which poisons the parameters at once.

    Examples:
        >>> f = one_cycle(1.0, 10)
        >>> [round(f(n), 6) for n in (0, 2, 9)]
        [0.04, 1.0, 4e-06]
    """
    ends = _phases(_NAME, total_steps, pct_start, anneal_strategy, three_phase)
    max_lr = S.check_number(_NAME, "max_lr", max_lr, low=0.0)
    div = S.check_number(_NAME, "div_factor", div_factor, low=0.0, low_open=True)
    final_div = S.check_number(_NAME, "final_div_factor", final_div_factor, low=0.0, low_open=True)
    initial = max_lr / div
    low = initial / final_div
    values = [(initial, max_lr), (max_lr, initial), (initial, low)] if three_phase else [(initial, max_lr), (max_lr, low)]
    return _cycle(_NAME, total_steps, ends, values, anneal_strategy)


def one_cycle_momentum(total_steps: int, pct_start: float = 0.3, anneal_strategy: str = "cos",
                       base_momentum: float = 0.85, max_momentum: float = 0.95,
                       three_phase: bool = False) -> Schedule:
    """The momentum (or Adam ``beta1``) that ``OneCycleLR(cycle_momentum=True)`` sets at step n.

    It runs against the learning rate: ``max_momentum`` down to ``base_momentum`` while the
    lr rises, and back up while it falls (three-phase: the third phase stays at
    ``max_momentum``). Pass it as ``sgd(momentum=...)`` / ``trace(decay=...)`` or as Adam's
    ``beta1``: ``adam(lr=one_cycle(...), betas=(one_cycle_momentum(T), 0.999))``.
    """
    name = "deepfn.optim.one_cycle_momentum"
    ends = _phases(name, total_steps, pct_start, anneal_strategy, three_phase)
    base = S.check_number(name, "base_momentum", base_momentum, low=0.0, high=1.0)
    top = S.check_number(name, "max_momentum", max_momentum, low=0.0, high=1.0)
    values = [(top, base), (base, top), (top, top)] if three_phase else [(top, base), (base, top)]
    return _cycle(name, total_steps, ends, values, anneal_strategy)

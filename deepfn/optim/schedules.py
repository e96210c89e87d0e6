"""Learning-rate schedules: pure functions ``step -> lr``.

The n-th optimizer update (n = 0, 1, ...) uses ``schedule(n)``. A step is an ``int`` (the
result is a Python float, computed as ``torch.optim.lr_scheduler`` computes it) or a 0-d
integer tensor (the result is a float64 0-d tensor, computed branch-free so that
``torch.compile`` traces one graph for all steps and ``vmap`` can batch it).
``one_cycle`` lives in :mod:`deepfn.optim.one_cycle` and is re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import _steps as S
from .base import Schedule
from .one_cycle import one_cycle, one_cycle_momentum

__all__ = ["constant", "linear_warmup", "cosine_decay", "noam", "one_cycle", "one_cycle_momentum", "join"]


def constant(lr: float) -> Schedule:
    """``lr`` at every step. Twin: a fixed ``lr`` in ``torch.optim``."""
    lr = S.check_number("deepfn.optim.constant", "lr", lr, low=0.0)

    def schedule(step: Any) -> Any:
        t = S.as_step("deepfn.optim.constant", step)
        return torch.full_like(t, lr) if S.is_tensor(t) else lr

    return schedule


def linear_warmup(lr: float, warmup_steps: int, init_value: float = 0.0) -> Schedule:
    """Rise linearly from ``init_value`` to ``lr`` over ``warmup_steps`` steps, then stay.

    ``lr(n) = init_value + (lr - init_value) * min(n, warmup_steps) / warmup_steps``, so
    ``lr(0) == init_value`` and ``lr(warmup_steps) == lr`` (Optax's ``linear_schedule``).
    Twin: ``LambdaLR(opt, lambda n: min(n, warmup_steps) / warmup_steps)``.
    """
    name = "deepfn.optim.linear_warmup"
    lr = S.check_number(name, "lr", lr, low=0.0)
    warmup = S.check_int(name, "warmup_steps", warmup_steps, low=1)
    init_value = S.check_number(name, "init_value", init_value, low=0.0)

    def schedule(step: Any) -> Any:
        frac = S.minimum(S.as_step(name, step), float(warmup)) / warmup
        return init_value + (lr - init_value) * frac

    return schedule


def cosine_decay(lr: float, decay_steps: int, alpha: float = 0.0, warmup_steps: int = 0) -> Schedule:
    """Cosine decay from ``lr`` to ``alpha * lr`` over ``decay_steps`` steps, then flat.

    ``lr(n) = lr * (alpha + (1 - alpha) * (1 + cos(pi * min(n, D) / D)) / 2)``. With
    ``warmup_steps = W > 0`` the first W steps rise linearly, ``lr * n / W``, and the cosine
    starts at step W (``n`` above becomes ``n - W``). Twin: ``CosineAnnealingLR(T_max=D,
    eta_min=alpha * lr)`` for ``n <= D`` (without warmup).
    """
    name = "deepfn.optim.cosine_decay"
    lr = S.check_number(name, "lr", lr, low=0.0)
    decay = S.check_int(name, "decay_steps", decay_steps, low=1)
    alpha = S.check_number(name, "alpha", alpha, low=0.0, high=1.0)
    warmup = S.check_int(name, "warmup_steps", warmup_steps, low=0)

    def schedule(step: Any) -> Any:
        t = S.as_step(name, step)
        k = S.clip(t - warmup, 0.0, float(decay))
        value = lr * (alpha + (1.0 - alpha) * (1.0 + S.cos(math.pi * k / decay)) / 2.0)
        if warmup == 0:
            return value
        return S.where(t < warmup, lr * t / warmup, value)

    return schedule


def noam(d_model: int, warmup: int, factor: float = 1.0) -> Schedule:
    """The Transformer schedule (Vaswani et al. 2017, eq. 3), with ``s = n + 1``.

    ``lr(n) = factor * d_model**-0.5 * min(s**-0.5, s * warmup**-1.5)``: linear warmup
    for ``warmup`` steps, then inverse square-root decay. Twin: ``LambdaLR`` with this
    formula and base lr ``factor``.
    """
    name = "deepfn.optim.noam"
    d_model = S.check_int(name, "d_model", d_model, low=1)
    warmup = S.check_int(name, "warmup", warmup, low=1)
    factor = S.check_number(name, "factor", factor, low=0.0)

    def schedule(step: Any) -> Any:
        s = S.as_step(name, step) + 1.0
        return factor * d_model ** -0.5 * S.minimum(s ** -0.5, s * warmup ** -1.5)

    return schedule


def join(schedules: Sequence[Callable[[Any], Any]], boundaries: Sequence[int]) -> Schedule:
    """Run ``schedules[0]`` until ``boundaries[0]``, then ``schedules[1]`` restarted at 0, ...

    ``len(boundaries) == len(schedules) - 1``, boundaries strictly increasing and > 0.
    At step n with ``b[i-1] <= n < b[i]`` the value is ``schedules[i](n - b[i-1])``.
    Twin: ``torch.optim.lr_scheduler.SequentialLR`` (with its milestones).

    Examples:
        >>> from deepfn.optim import schedules as sch
        >>> f = sch.join([sch.linear_warmup(1.0, 2), sch.constant(0.5)], [2])
        >>> [f(n) for n in range(4)]
        [0.0, 0.5, 0.5, 0.5]
    """
    name = "deepfn.optim.join"
    schedules = list(schedules)
    bounds = [S.check_int(name, "boundaries[i]", b, low=1) for b in boundaries]
    if not schedules or not all(callable(s) for s in schedules):
        raise TypeError(f"{name}: schedules must be a non-empty sequence of callables; got {schedules!r}")
    if len(bounds) != len(schedules) - 1:
        raise ValueError(f"{name}: needs len(schedules) - 1 = {len(schedules) - 1} boundaries; got {len(bounds)}")
    if any(b >= c for b, c in zip(bounds, bounds[1:], strict=False)):
        raise ValueError(f"{name}: boundaries must increase strictly; got {bounds}")
    starts = [0, *bounds]

    def schedule(step: Any) -> Any:
        t = S.as_step(name, step)
        if not S.is_tensor(t):
            i = sum(1 for b in bounds if step >= b)
            return schedules[i](step - starts[i])
        # Every piece is evaluated (branch-free); each sees its step clipped to its own
        # range, so a piece with a hard end (one_cycle) never sees a step past it.
        value = None
        for i in reversed(range(len(schedules))):
            local = step - starts[i]
            local = local.clamp(0, bounds[i] - starts[i]) if i < len(bounds) else local.clamp(min=0)
            v = torch.as_tensor(schedules[i](local), dtype=torch.float64)
            value = v if value is None else torch.where(t < bounds[i], v, value)
        return value

    return schedule

"""Step arithmetic shared by the schedules: one code path for ``int`` and 0-d tensor steps.

An ``int`` step is computed with Python floats (as ``torch.optim.lr_scheduler`` does); a
tensor step with float64 tensors, so a compiled training step sees one graph for every
step instead of a new Python-float guard (and a recompile) per step.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._checks import describe
from .._torch import plain_eager

Num = Any  # float | float64 0-d Tensor


def as_step(where: str, step: Any) -> Num:
    """Validate a step and return it as a float or a float64 tensor."""
    if isinstance(step, torch.Tensor):
        if step.is_floating_point() or step.is_complex() or step.dtype == torch.bool:
            raise TypeError(f"{where}: step must be an int or a 0-d integer tensor; got {describe(step)}")
        if step.ndim != 0:
            raise ValueError(f"{where}: step must be an int or a 0-d integer tensor; got {describe(step)}")
        return step.to(torch.float64)
    if isinstance(step, bool) or not isinstance(step, int):
        raise TypeError(f"{where}: step must be an int or a 0-d integer tensor; got {describe(step)}")
    if step < 0:
        raise ValueError(f"{where}: step must be >= 0; got {step}")
    return float(step)


def is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def cos(x: Num) -> Num:
    return torch.cos(x) if is_tensor(x) else math.cos(x)


def minimum(x: Num, y: Num) -> Num:
    if is_tensor(x) and is_tensor(y):
        return torch.minimum(x, y)
    if is_tensor(x) or is_tensor(y):
        t, c = (x, y) if is_tensor(x) else (y, x)
        return t.clamp(max=c)
    return min(x, y)


def clip(x: Num, low: float, high: float) -> Num:
    return torch.clamp(x, low, high) if is_tensor(x) else min(max(x, low), high)


def where(cond: Any, a: Num, b: Num) -> Num:
    """``a if cond else b``; elementwise (and branch-free) when ``cond`` is a tensor."""
    if is_tensor(cond):
        return torch.where(cond, a, b)
    return a if cond else b


def concrete(x: Any) -> bool:
    """True when a tensor's value may be read without breaking a graph or a transform."""
    return not is_tensor(x) or plain_eager([x])


def check_number(where_: str, name: str, value: Any, *, low: float | None = None,
                 low_open: bool = False, high: float | None = None, high_open: bool = False,
                 finite: bool = True) -> float:
    """Config check: a real number in the given range, finite unless ``finite=False`` (an
    infinite learning rate or decay is accepted by the arithmetic and ruins every parameter);
    returns it as a float."""
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    rng = f" in {lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise TypeError(f"{where_}: {name} must be a number{rng}; got {value!r}")
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high:
        raise ValueError(f"{where_}: {name} must be{rng}; got {value!r}")
    if finite and math.isinf(value):
        raise ValueError(f"{where_}: {name} must be finite{rng}; got {value!r}")
    return float(value)


def check_int(where_: str, name: str, value: Any, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{where_}: {name} must be an int >= {low}; got {value!r}")
    return value

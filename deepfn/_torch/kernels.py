"""``torch._foreach_*`` and the AMP unscale kernel: one kernel per op over a list of tensors.

torch has no public API for them (``torch.optim``'s ``foreach=True`` path calls the same
private ops). :func:`usable` is the gate every caller asks first: eagerly on plain tensors,
with the hook on and the ops checked once per process against their per-tensor definitions on
tiny inputs (a changed signature or semantics turns the hook off, with one warning, before any
caller's tensor is touched). When it says False the caller computes per tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .gate import hook_on, turn_off
from .probes import plain_eager

_CHECKED: dict[str, bool] = {}   # "foreach" -> the self-check passed (computed once)


def foreach(name: str, *args: Any, **kwargs: Any) -> Any:
    """``torch._foreach_<name>(*args, **kwargs)`` (``name`` like ``"add_"``, ``"norm"``); call
    only when :func:`usable` said True for these tensors."""
    return getattr(torch, "_foreach_" + name)(*args, **kwargs)


def usable(tensors: Sequence[torch.Tensor]) -> bool:
    """True when ``foreach`` ops may run on ``tensors``: plain eager tensors, the hook on, the
    ops checked."""
    return plain_eager(tensors) and hook_on("foreach") and _checked()


def _checked() -> bool:
    if "foreach" not in _CHECKED:
        try:
            _self_check()
            _CHECKED["foreach"] = True
        except Exception as error:
            _CHECKED["foreach"] = False
            turn_off("foreach", error)
    return _CHECKED["foreach"]


def _self_check() -> None:
    """Every ``_foreach`` op deepfn calls, against its per-tensor definition (exact on these
    small values); raises on any difference or error."""
    def xs() -> list[torch.Tensor]:
        return [torch.tensor([3.0, 4.0]), torch.tensor([9.0])]

    ys = [torch.tensor([2.0, 0.5]), torch.tensor([3.0])]
    zs = [torch.tensor([4.0, 2.0]), torch.tensor([0.5])]
    s = torch.tensor(2.0)
    cases = {
        "add_lists": (lambda: foreach("add", xs(), ys, alpha=2.0), [x + 2 * y for x, y in zip(xs(), ys, strict=True)]),
        "add_scalar": (lambda: foreach("add", xs(), 2.0), [x + 2 for x in xs()]),
        "mul_scalar": (lambda: foreach("mul", xs(), 2.0), [x * 2 for x in xs()]),
        "mul_tensor": (lambda: foreach("mul", xs(), s), [x * 2 for x in xs()]),
        "div_lists": (lambda: foreach("div", xs(), ys), [x / y for x, y in zip(xs(), ys, strict=True)]),
        "lerp": (lambda: foreach("lerp", xs(), ys, 0.5), [torch.lerp(x, y, 0.5) for x, y in zip(xs(), ys, strict=True)]),
        "addcmul": (lambda: foreach("addcmul", xs(), ys, zs, 2.0),
                    [x + 2 * y * z for x, y, z in zip(xs(), ys, zs, strict=True)]),
        "sqrt": (lambda: foreach("sqrt", xs()), [torch.sqrt(x) for x in xs()]),
        "norm": (lambda: foreach("norm", xs(), 2.0), [torch.linalg.vector_norm(x) for x in xs()]),
    }
    for name, (run, want) in cases.items():
        _same(name, list(run()), want)
    in_place = (("add_", (ys,), {"alpha": 2.0}, [x + 2 * y for x, y in zip(xs(), ys, strict=True)]),
                ("add_", (2.0,), {}, [x + 2 for x in xs()]),
                ("mul_", (2.0,), {}, [x * 2 for x in xs()]),
                ("mul_", (s,), {}, [x * 2 for x in xs()]),
                ("lerp_", (ys, 0.5), {}, [torch.lerp(x, y, 0.5) for x, y in zip(xs(), ys, strict=True)]),
                ("addcmul_", (ys, zs, 2.0), {}, [x + 2 * y * z for x, y, z in zip(xs(), ys, zs, strict=True)]),
                ("addcdiv_", (ys, zs, 2.0), {}, [x + 2 * y / z for x, y, z in zip(xs(), ys, zs, strict=True)]))
    for op, args, kwargs, want in in_place:
        out = xs()
        foreach(op, out, *args, **kwargs)
        _same(op, out, want)


def _same(name: str, got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    if len(got) != len(want) or not all(torch.equal(g, w) for g, w in zip(got, want, strict=True)):
        raise ValueError(f"torch._foreach check {name!r}: got {got}, expected {want}")


def _amp_kernel(grads: list[torch.Tensor], found_inf: torch.Tensor, inv_scale: torch.Tensor) -> None:
    torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale)


def unscale_and_check_(grads: list[torch.Tensor], found_inf: torch.Tensor, inv_scale: torch.Tensor) -> None:
    """In place: ``grads[i] *= inv_scale``, and ``found_inf`` set to 1.0 when any of ``grads``
    holds a NaN or an infinity (``GradScaler``'s unscale step).

    Args:
        grads: floating tensors on one device (written).
        found_inf: float32 ``[1]`` on that device, 0.0 on entry (written).
        inv_scale: float32 ``[1]`` on that device.

    One kernel eagerly on plain tensors (the private op), else per tensor with public ops
    (the same products: one multiply by the same float32 factor).
    """
    if plain_eager([*grads, found_inf, inv_scale]) and hook_on("amp_unscale"):
        try:
            _amp_kernel(grads, found_inf, inv_scale)
            return
        except Exception as error:   # the op moved or its signature changed: it raised before writing
            turn_off("amp_unscale", error)
    for g in grads:
        bad = torch.logical_not(torch.isfinite(g)).any()
        found_inf.copy_(torch.where(bad, torch.ones_like(found_inf), found_inf))
        g.mul_(inv_scale)

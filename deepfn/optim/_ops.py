"""Out-of-place list ops over the leaves of a tree: ``torch._foreach_*`` when it can, per leaf when not.

Eagerly, one ``_foreach`` kernel per op over all leaves is what makes ``torch.optim``'s
``foreach=True`` path fast, and we use the same kernels (out of place, so the caller's
tensors are never written). Two places refuse or do not need them:

* ``torch.func`` transforms: ``_foreach_*`` ops have no batching rule (``vmap`` raises
  "Batching rule not implemented for aten::_foreach_mul.Scalar"), so functorch-wrapped
  leaves take the per-leaf path.
* ``torch.compile``: Inductor fuses the per-leaf elementwise ops itself, and the functorch
  probe above cannot be traced by Dynamo, so compiled code always takes the per-leaf path.

Scalars may be Python numbers or 0-d tensors (schedules give float64 0-d tensors for a
tensor step); both are cast to the leaf dtype inside the kernel, as ``torch.optim`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._torch import foreach, foreach_usable, plain_eager

Tensor = torch.Tensor
Leaves = Sequence[Tensor]
Scalar = Any  # float | int | 0-d Tensor


def use_foreach(xs: Leaves) -> bool:
    """True eagerly on plain tensors with torch's foreach kernels usable; False while compiling,
    under a ``torch.func`` transform, or with the kernels' hook off (see :mod:`deepfn._torch`)."""
    return foreach_usable(xs)


def _cast(x: Tensor, s: Scalar) -> Scalar:
    # A float64 0-d scalar times a float32 0-d leaf would promote the leaf to float64
    # (two 0-d tensors promote like any tensors): cast the scalar to the leaf dtype, which
    # is also the rounding the kernel applies to a Python-float scalar.
    return s.to(x.dtype) if isinstance(s, torch.Tensor) and s.dtype != x.dtype else s


def _per_leaf(xs: Leaves, s: Scalar) -> list[Scalar]:
    """``_cast(x, s)`` for every leaf, one cast per dtype: each Python call per leaf costs
    Dynamo tracing time (hundreds per update)."""
    if not isinstance(s, torch.Tensor):
        return [s] * len(xs)
    casts = {}
    for x in xs:
        if x.dtype not in casts:
            casts[x.dtype] = _cast(x, s)
    return [casts[x.dtype] for x in xs]


def hoist(s: Scalar) -> Scalar:
    """Under ``torch.compile``, make a per-step 0-d scalar (a schedule, a bias correction) a buffer.

    Inductor inlines 0-d pointwise math into every consumer loop, so ``std::pow``/``cos`` of the
    step ran once per 16-element vector (several times slower AdamW steps). A reduction is
    never inlined; ``amax`` of ``[s, s]`` is ``s`` exactly (NaN included).
    """
    if isinstance(s, torch.Tensor) and torch.compiler.is_compiling():
        return torch.stack([s, s]).amax()
    return s


def write_back(olds: Leaves, news: Leaves) -> list[Tensor]:
    """Donation outside the eager foreach path: copy ``news`` into ``olds`` and return ``olds``.

    Under ``torch.compile`` the ``copy_`` into a graph input becomes a store into that input's
    buffer inside the fused kernel (no fresh output memory). Under a ``torch.func``
    transform (wrapped tensors) nothing is written and ``news`` come back: a donation is a
    permission, never needed for the numbers.
    """
    if not torch.compiler.is_compiling() and not plain_eager((*olds, *news)):
        return list(news)
    for old, new in zip(olds, news, strict=True):
        old.copy_(new)
    return list(olds)


def _scalar_op(name: str, xs: Leaves, s: Scalar, fe: bool, inplace: bool) -> list[Tensor]:
    s = hoist(s)
    if fe and (not isinstance(s, torch.Tensor) or len({x.dtype for x in xs}) == 1):
        s = _cast(xs[0], s)
        if inplace:
            foreach(f"{name}_", xs, s)
            return list(xs)
        return list(foreach(name, xs, s))
    op = getattr(torch, name)
    # zip without strict=: Dynamo traces the strict form through a polyfill, a call per leaf.
    return [op(x, c) for x, c in zip(xs, _per_leaf(xs, s))]  # noqa: B905 (equal lengths by construction)


# ``inplace=True`` writes into ``xs`` on the eager foreach path: only for lists the caller
# has just created itself (never the caller's inputs), to save an allocation per leaf.
def mul(xs: Leaves, s: Scalar, fe: bool, inplace: bool = False) -> list[Tensor]:
    return _scalar_op("mul", xs, s, fe, inplace)


def add_scalar(xs: Leaves, s: Scalar, fe: bool, inplace: bool = False) -> list[Tensor]:
    return _scalar_op("add", xs, s, fe, inplace)


def add(xs: Leaves, ys: Leaves, fe: bool, alpha: float = 1.0, inplace: bool = False) -> list[Tensor]:
    """``x + alpha * y`` (one rounding, like ``Tensor.add(y, alpha=...)``)."""
    if fe and inplace:
        foreach("add_", xs, ys, alpha=alpha)
        return list(xs)
    if fe:
        return list(foreach("add", xs, ys, alpha=alpha))
    return [torch.add(x, y, alpha=alpha) for x, y in zip(xs, ys, strict=True)]


def div_lists(xs: Leaves, ys: Leaves, fe: bool, into_y: bool = False) -> list[Tensor]:
    """``x / y``; ``into_y=True`` (``ys`` the caller's own temporaries) writes into ``ys`` eagerly.

    There is no in-place foreach op for ``y = x / y``; ``torch.div(x, y, out=y)`` per leaf
    costs a Python call each but saves an allocation (and its page faults) per leaf. Autograd
    refuses ``out=`` on tensors that require grad (an update of ``nn.Parameter`` leaves under
    grad mode): those take the foreach op into fresh tensors.
    """
    if fe and into_y and not (torch.is_grad_enabled() and any(t.requires_grad for t in (*xs, *ys))):
        for x, y in zip(xs, ys, strict=True):
            torch.div(x, y, out=y)
        return list(ys)
    return list(foreach("div", xs, ys)) if fe else [x / y for x, y in zip(xs, ys, strict=True)]


def lerp(xs: Leaves, ys: Leaves, weight: Scalar, fe: bool, inplace: bool = False) -> list[Tensor]:
    """``x + weight * (y - x)``, the exact kernel of ``exp_avg.lerp_(grad, 1 - beta1)``.

    A 0-d tensor ``weight`` (a scheduled beta1) takes the per-leaf path: the foreach kernel
    wants a Python number, and reading one would sync with the device.
    """
    if fe and not isinstance(weight, torch.Tensor):
        if inplace:
            foreach("lerp_", xs, ys, weight)
            return list(xs)
        return list(foreach("lerp", xs, ys, weight))
    weight = hoist(weight)
    if fe and inplace:
        return [x.lerp_(y, w) for x, y, w in zip(xs, ys, _per_leaf(xs, weight))]  # noqa: B905
    return [torch.lerp(x, y, w) for x, y, w in zip(xs, ys, _per_leaf(xs, weight))]  # noqa: B905


def addcmul(xs: Leaves, ys: Leaves, zs: Leaves, value: float, fe: bool, inplace: bool = False) -> list[Tensor]:
    """``x + value * y * z``."""
    if fe and inplace:
        foreach("addcmul_", xs, ys, zs, value)
        return list(xs)
    if fe:
        return list(foreach("addcmul", xs, ys, zs, value))
    return [torch.addcmul(x, y, z, value=value) for x, y, z in zip(xs, ys, zs, strict=True)]


def sqrt(xs: Leaves, fe: bool) -> list[Tensor]:
    return list(foreach("sqrt", xs)) if fe else [torch.sqrt(x) for x in xs]

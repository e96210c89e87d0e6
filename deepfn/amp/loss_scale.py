"""Dynamic loss scaling as an immutable value. Twin: ``torch.amp.GradScaler``.

Every field of :class:`DynamicLossScale` is a tensor and a pytree child (the flatten is
derived from ``dataclasses.fields``), so the hyper-parameters survive ``vmap``,
``torch.compile`` and checkpoints: jmp's loss scale lost ``min_loss_scale`` through tree
operations (jmp#44). ``adjust`` is branch-free (``torch.where``), so a skipped step costs no
graph break and no ``.item()``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .. import tree
from .._checks import describe
from ..typing import PyTree, Tensor

__all__ = ["DynamicLossScale", "NoOpLossScale", "all_finite"]


def all_finite(x: PyTree) -> Tensor:
    """``True`` (a 0-d bool tensor) when every floating leaf of ``x`` is finite."""
    flags = [torch.isfinite(v).all() for v in tree.leaves(x)
             if isinstance(v, torch.Tensor) and v.is_floating_point()]
    if not flags:
        return torch.ones((), dtype=torch.bool)
    return torch.stack(flags).all()


def _as_tensor(value, dtype: torch.dtype, name: str, positive: bool = True):
    # Python numbers become tensors; anything else (traced or batched tensors, placeholders
    # that pytree utilities pass through unflatten) is kept as it is.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if positive and not value > 0:
        raise ValueError(f"DynamicLossScale: {name} must be > 0; got {value!r}")
    return torch.tensor(value, dtype=dtype)


@dataclass(frozen=True)
class DynamicLossScale:
    """Scale the loss up so half-precision gradients do not underflow; adapt the scale.

    ``adjust(finite)``: a non-finite step multiplies the scale by ``backoff_factor`` and
    resets the counter; ``growth_interval`` finite steps in a row multiply it by
    ``growth_factor`` (kept only if finite) and reset the counter, as ``GradScaler`` does.

    Fields (0-d tensors; Python numbers are converted): ``loss_scale`` float32,
    ``counter`` int64 (consecutive finite steps), ``growth_interval`` int64,
    ``growth_factor`` and ``backoff_factor`` float32.

    Examples:
        >>> import torch
        >>> ls = DynamicLossScale(init_scale=8.0, growth_interval=1)
        >>> float(ls.adjust(torch.tensor(True)).loss_scale)
        16.0
    """

    loss_scale: Tensor = 2.0 ** 16
    counter: Tensor = 0
    growth_interval: Tensor = 2000
    growth_factor: Tensor = 2.0
    backoff_factor: Tensor = 0.5

    def __init__(self, init_scale=2.0 ** 16, growth_interval=2000, growth_factor=2.0,
                 backoff_factor=0.5, *, loss_scale=None, counter=0):
        if isinstance(growth_interval, float) or (isinstance(growth_interval, int) and growth_interval < 1):
            raise ValueError(f"DynamicLossScale: growth_interval must be a positive int; got {growth_interval!r}")
        if isinstance(growth_factor, (int, float)) and not isinstance(growth_factor, bool) and growth_factor <= 1:
            raise ValueError(f"DynamicLossScale: growth_factor must be > 1; got {growth_factor!r}")
        if isinstance(backoff_factor, (int, float)) and not 0 < backoff_factor < 1:
            raise ValueError(f"DynamicLossScale: backoff_factor must be in (0, 1); got {backoff_factor!r}")
        scale = init_scale if loss_scale is None else loss_scale
        set_ = object.__setattr__
        set_(self, "loss_scale", _as_tensor(scale, torch.float32, "init_scale"))
        set_(self, "counter", _as_tensor(counter, torch.int64, "counter", positive=False))
        set_(self, "growth_interval", _as_tensor(growth_interval, torch.int64, "growth_interval"))
        set_(self, "growth_factor", _as_tensor(growth_factor, torch.float32, "growth_factor"))
        set_(self, "backoff_factor", _as_tensor(backoff_factor, torch.float32, "backoff_factor"))

    def scale(self, loss: PyTree) -> PyTree:
        """``loss * loss_scale`` leaf-wise, each leaf keeping its dtype."""
        return tree.map(lambda x: x * self.loss_scale.to(x.dtype), loss)

    def unscale(self, grads: PyTree) -> PyTree:
        """``grads / loss_scale`` leaf-wise (multiplied by the float32 reciprocal, as GradScaler),
        each leaf keeping its dtype."""
        inv = self.inverse_scale()
        return tree.map(lambda g: (g * inv).to(g.dtype) if g.is_floating_point() else g, grads)

    def inverse_scale(self) -> Tensor:
        """``1 / loss_scale`` as GradScaler computes it: in float64, then rounded to float32 (0-d)."""
        return torch.reciprocal(self.loss_scale.double()).float()

    def adjust(self, grads_finite: Tensor) -> DynamicLossScale:
        """The next loss scale after a step whose gradients were finite or not (0-d bool)."""
        if not isinstance(grads_finite, torch.Tensor) or grads_finite.dtype != torch.bool:
            raise TypeError(f"DynamicLossScale.adjust: grads_finite must be a bool tensor "
                            f"(from amp.all_finite); got {describe(grads_finite)}")
        count = self.counter + 1
        grow = grads_finite & (count >= self.growth_interval)
        grown = self.loss_scale * self.growth_factor
        grown = torch.where(torch.isfinite(grown), grown, self.loss_scale)
        scale = torch.where(grads_finite, torch.where(grow, grown, self.loss_scale),
                            self.loss_scale * self.backoff_factor)
        counter = torch.where(grads_finite & ~grow, count, torch.zeros_like(count))
        return replace(self, loss_scale=scale, counter=counter)


tree.register_dataclass(DynamicLossScale)


@dataclass(frozen=True)
class NoOpLossScale:
    """No loss scaling: ``scale``/``unscale`` return their input, ``adjust`` returns ``self``."""

    def scale(self, loss: PyTree) -> PyTree:
        return loss

    def unscale(self, grads: PyTree) -> PyTree:
        return grads

    def adjust(self, grads_finite: Tensor) -> NoOpLossScale:
        return self


tree.register_dataclass(NoOpLossScale)

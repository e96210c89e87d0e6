"""Unscaling, the finite check and the skip of a train step, with their eager fast paths.

The reference (what compiled and vmapped steps run): ``grads = loss_scale.unscale(grads)``,
``ok = amp.all_finite(grads)``, ``norm = tree.global_norm(grads)``, and a skipped step selects
the old trees with ``torch.where(ok, new, old)``. Eagerly on plain tensors the same values
come cheaper:

- with a loss scale, ``GradScaler``'s own fused kernel unscales and checks in one in-place
  pass over gradients the step owns (``isfinite(g).all()`` per leaf costs several passes);
- without one, a finite global norm settles the check: an inf or NaN leaf makes the norm
  inf or NaN, so only a non-finite norm (which may be an overflow of finite squares) needs
  the per-leaf check;
- on the CPU the flag is read on the host, and the skip is a Python branch instead of
  ``torch.where`` over params, optimizer state and model state (three passes over memory).
"""

from __future__ import annotations

from typing import Any

import torch

from .. import tree
from .._torch import plain_eager, unscale_and_check_
from ..amp import DynamicLossScale, NoOpLossScale, all_finite
from ..tree import flat as _flat
from ..typing import PyTree, Tensor

__all__ = ["unscale_and_check", "readable_on_host", "keep_if"]


def unscale_and_check(loss_scale: DynamicLossScale | None, grads: PyTree, owned: bool
                      ) -> tuple[PyTree, Tensor, Tensor]:
    """``(grads / scale, all finite?, global norm of the unscaled grads)``.

    Args:
        loss_scale: None (no scaling: ``grads`` as they are) or the step's loss scale.
        grads: the gradient tree.
        owned: the step made ``grads`` itself, so the fused kernel may write into them.

    Returns:
        The unscaled gradients, a 0-d bool tensor and the 0-d norm (``tree.global_norm``).
    """
    if loss_scale is not None:
        grads, ok = _fused_unscale_and_check(loss_scale, grads, owned)
        return grads, ok, tree.global_norm(grads)
    norm = tree.global_norm(grads)
    if readable_on_host(norm):
        ok = torch.isfinite(norm)
        return grads, (ok if bool(ok) else all_finite(grads)), norm
    return grads, _fused_unscale_and_check(NoOpLossScale(), grads, owned)[1], norm


def _fused_unscale_and_check(scaler: Any, grads: PyTree, owned: bool) -> tuple[PyTree, Tensor]:
    """``(scaler.unscale(grads), all_finite(...))``; eagerly on owned plain tensors of one device,
    :func:`deepfn._torch.unscale_and_check_` in place, one kernel per dtype."""
    eager = owned and not torch.compiler.is_compiling()   # compiling: not even the leaves (tracing time)
    if eager:
        floats = [g for g in tree.leaves(grads) if isinstance(g, torch.Tensor) and g.is_floating_point()]
        eager = plain_eager(floats) and len({g.device for g in floats}) == 1
    if not eager:
        grads = scaler.unscale(grads)
        return grads, all_finite(grads)
    device = floats[0].device
    found = torch.zeros(1, dtype=torch.float32, device=device)
    inv = (torch.ones(1, dtype=torch.float32, device=device) if isinstance(scaler, NoOpLossScale)
           else scaler.inverse_scale().reshape(1))
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for g in floats:
        by_dtype.setdefault(g.dtype, []).append(g)
    for group in by_dtype.values():
        unscale_and_check_(group, found, inv)
    return grads, found[0] == 0


def readable_on_host(flag: Tensor) -> bool:
    """True when ``bool(flag)`` neither breaks a graph or a transform nor waits for a device."""
    return flag.device.type == "cpu" and plain_eager([flag])


def keep_if(ok: Tensor, new: PyTree, old: PyTree) -> PyTree:
    """``new`` where ``ok`` else ``old``: two trees of one structure (non-tensor leaves from ``new``).

    A Python branch when ``ok`` is readable on the host, else ``torch.where`` per leaf in one
    flat list (no Python call per leaf, each of which costs Dynamo ~2 ms of tracing).
    """
    if readable_on_host(ok):
        return new if bool(ok) else old
    (news, olds), spec = _flat.flatten_alike("deepfn.train", new, old)
    return _flat.unflatten(spec, [torch.where(ok, n, o) if isinstance(n, torch.Tensor) else n
                                  for n, o in zip(news, olds, strict=True)])

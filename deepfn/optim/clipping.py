"""Gradient clipping by global norm. Twin: ``torch.nn.utils.clip_grad_norm_``."""

from __future__ import annotations

import torch

from .. import tree
from ..tree import flat as _flat
from ..typing import PyTree
from . import _ops
from . import _steps as S
from .base import EmptyState, GradientTransformation, check_state, mark

__all__ = ["clip_by_global_norm"]


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Scale all updates by ``min(1, max_norm / (norm + 1e-6))``, ``norm`` their global 2-norm.

    The norm is ``clip_grad_norm_``'s: the 2-norm of the per-leaf 2-norms, in the first
    leaf's dtype; the 1e-6 is torch's too, so clipped gradients equal torch's.

    Examples:
        >>> import torch
        >>> u, _ = clip_by_global_norm(1.0).update({"w": torch.tensor([3.0, 4.0])}, EmptyState())
        >>> [round(v, 4) for v in u["w"].tolist()]
        [0.6, 0.8]
    """
    name = "deepfn.optim.clip_by_global_norm"
    # An infinite max_norm is allowed, as torch allows it: it turns clipping off.
    max_norm = S.check_number(name, "max_norm", max_norm, low=0.0, low_open=True, finite=False)

    def update(updates: PyTree, state: EmptyState, params: PyTree = None, *, _owned: bool = False):
        check_state(name, state, EmptyState)
        xs, spec = _flat.flatten(updates)
        if not xs:
            return updates, state
        for x in xs:
            if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                raise TypeError(f"{name}: every update leaf must be a floating tensor; got {type(x).__name__}")
        fe = _ops.use_foreach(xs)
        return _flat.unflatten(spec, _scaled(xs, max_norm, tree.global_norm(updates), fe, _owned)), state

    update = mark(update, fresh=True, reuses=True)
    update.whole_tree = True   # the norm of the whole tree: sharded steps refuse it (clip_norm= instead)
    return GradientTransformation(lambda params: EmptyState(), update)


def clip_given_norm(updates: PyTree, max_norm: float, norm: torch.Tensor, *, inplace: bool = False) -> PyTree:
    """``updates * min(1, max_norm / (norm + 1e-6))``: :func:`clip_by_global_norm`'s clip, given
    the updates' global 2-norm ``norm`` (0-d; a train step reuses the norm it reports).

    ``inplace``: eagerly, multiply the caller's own tensors in place (one foreach kernel).
    Returns a tree like ``updates``.
    """
    xs, spec = _flat.flatten(updates)
    return _flat.unflatten(spec, _scaled(xs, max_norm, norm, _ops.use_foreach(xs), inplace))


def _scaled(xs: list[torch.Tensor], max_norm: float, norm: torch.Tensor, fe: bool, inplace: bool) -> list[torch.Tensor]:
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    return _ops.mul(xs, coef, fe, inplace=inplace)

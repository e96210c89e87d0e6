"""Stochastic gradient descent with momentum. Twin: ``torch.optim.SGD``."""

from __future__ import annotations

from . import _steps as S
from .base import GradientTransformation, ScalarOrSchedule, chain
from .transforms import Mask, add_decayed_weights, scale_by_learning_rate, trace

__all__ = ["sgd"]


def sgd(lr: ScalarOrSchedule, momentum: ScalarOrSchedule = 0.0, dampening: float = 0.0,
        weight_decay: float = 0.0, nesterov: bool = False, mask: Mask | None = None) -> GradientTransformation:
    """SGD with ``torch.optim.SGD``'s numbers, as ``chain(add_decayed_weights, trace, scale_by_learning_rate)``.

    At update n, with ``g`` the gradient and ``p`` the parameters::

        g   = g + weight_decay * p                       (on the leaves ``mask`` selects)
        buf = g if n == 0 else momentum * buf + (1 - dampening) * g
        g   = g + momentum * buf if nesterov else buf    (when momentum != 0)
        p   = p - lr(n) * g

    Args:
        lr: a float >= 0 or a schedule ``step -> lr``.
        momentum: a float >= 0, or a schedule (e.g. ``one_cycle_momentum``).
        dampening: in ``[0, 1]``; nesterov needs 0.
        weight_decay: L2 penalty added to the gradient, >= 0.
        nesterov: Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.
        mask: which leaves decay (see ``add_decayed_weights``); all by default.

    Raises:
        ValueError: a negative ``lr``/``momentum``/``weight_decay``, or nesterov without
            momentum or with dampening (``torch.optim.SGD``'s checks).

    Examples:
        >>> import torch
        >>> opt = sgd(lr=0.1, momentum=0.9)
        >>> p = {"w": torch.zeros(2)}
        >>> u, s = opt.update({"w": torch.ones(2)}, opt.init(p), p)
        >>> u["w"].tolist()
        [-0.10000000149011612, -0.10000000149011612]
    """
    name = "deepfn.optim.sgd"
    if not callable(lr):
        S.check_number(name, "lr", lr, low=0.0)
    if not callable(momentum):
        S.check_number(name, "momentum", momentum, low=0.0)
    S.check_number(name, "dampening", dampening, low=0.0, high=1.0)
    S.check_number(name, "weight_decay", weight_decay, low=0.0)
    if nesterov and (not callable(momentum) and momentum <= 0 or dampening != 0):
        raise ValueError(f"{name}: nesterov=True requires momentum > 0 and dampening == 0; "
                         f"got momentum={momentum!r}, dampening={dampening!r}")
    parts = [add_decayed_weights(weight_decay, mask)]
    if callable(momentum) or momentum != 0:
        parts.append(trace(momentum, dampening=dampening, nesterov=nesterov))
    parts.append(scale_by_learning_rate(lr))
    return chain(*parts)

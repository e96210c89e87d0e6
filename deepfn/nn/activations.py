"""Activation registry: every ``activation`` argument takes a registered name or a callable.

``register(name, fn)`` adds a custom activation; ``get(name)`` looks one up and lists the
known names when it is missing. The seed's ``leaky_relu`` uses slope 0.01.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["register", "get", "names"]

Activation = Callable[[torch.Tensor], torch.Tensor]

_REGISTRY: dict[str, Activation] = {
    "relu": F.relu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "elu": F.elu,
    "softplus": F.softplus,
    "mish": F.mish,
    "identity": lambda x: x,
}


def register(name: str, fn: Activation) -> None:
    """Add ``fn`` under ``name``; re-registering a built-in name is refused."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"activations.register: name must be a non-empty str; got {name!r}")
    if not callable(fn):
        raise TypeError(f"activations.register: fn must be callable; got {type(fn).__name__}")
    if name in _REGISTRY and _REGISTRY[name] is not fn:
        raise ValueError(f"activations.register: {name!r} is already registered; pick another name")
    _REGISTRY[name] = fn


def get(name_or_fn: str | Activation) -> Activation:
    """The activation for a registered name, or the callable itself."""
    if callable(name_or_fn):
        return name_or_fn
    try:
        return _REGISTRY[name_or_fn]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown activation {name_or_fn!r}; expected one of {sorted(_REGISTRY)} or a callable "
            "(add one with deepfn.nn.activations.register(name, fn))"
        ) from None


def names() -> list[str]:
    """Registered activation names, sorted."""
    return sorted(_REGISTRY)

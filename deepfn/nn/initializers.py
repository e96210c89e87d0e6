"""Weight initialisers: pure functions ``(key, shape, dtype) -> Tensor``.

Fan computations follow ``torch.nn.init``: for a weight ``[out, in, *kernel]``,
``fan_in = in * prod(kernel)`` and ``fan_out = out * prod(kernel)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .. import random
from ..typing import Key

__all__ = [
    "BY_NAME", "fans", "get", "he_normal", "he_uniform", "normal", "ones", "torch_default",
    "torch_default_bias", "uniform", "xavier_normal", "xavier_uniform", "zeros",
]

Initializer = Callable[[Key, Sequence[int], torch.dtype], torch.Tensor]


def fans(shape: Sequence[int]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight shape, as ``torch.nn.init._calculate_fan_in_and_fan_out``."""
    if len(shape) < 2:
        raise ValueError(f"initializers.fans: need a weight of at least 2 dims; got shape {list(shape)}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def zeros(key: Key | None, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    device = key.device if key is not None else None
    return torch.zeros(tuple(shape), dtype=dtype, device=device)


def ones(key: Key | None, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    device = key.device if key is not None else None
    return torch.ones(tuple(shape), dtype=dtype, device=device)


def normal(std: float = 1.0, mean: float = 0.0) -> Initializer:
    """``N(mean, std^2)``; ``normal(0.02)`` is the seed's ``weight_init="normal"``."""
    def init(key: Key, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return mean + std * random.normal(key, tuple(shape), dtype)
    return init


def uniform(bound: float) -> Initializer:
    """``U(-bound, bound)``."""
    def init(key: Key, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return random.uniform(key, tuple(shape), dtype, low=-bound, high=bound)
    return init


def xavier_uniform(gain: float = 1.0) -> Initializer:
    """``U(-a, a)`` with ``a = gain * sqrt(6 / (fan_in + fan_out))`` (``nn.init.xavier_uniform_``)."""
    def init(key: Key, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        fan_in, fan_out = fans(shape)
        return uniform(gain * math.sqrt(6.0 / (fan_in + fan_out)))(key, shape, dtype)
    return init


def xavier_normal(gain: float = 1.0) -> Initializer:
    """``N(0, std^2)`` with ``std = gain * sqrt(2 / (fan_in + fan_out))``."""
    def init(key: Key, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        fan_in, fan_out = fans(shape)
        return normal(gain * math.sqrt(2.0 / (fan_in + fan_out)))(key, shape, dtype)
    return init


def he_normal(mode: str = "fan_in", gain: float = math.sqrt(2.0)) -> Initializer:
    """``N(0, (gain / sqrt(fan))^2)``: ``nn.init.kaiming_normal_(mode, nonlinearity="relu")``."""
    def init(key: Key, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        fan = fans(shape)[0 if mode == "fan_in" else 1]
        return normal(gain / math.sqrt(fan))(key, shape, dtype)
    return init


def he_uniform(mode: str = "fan_in", gain: float = math.sqrt(2.0)) -> Initializer:
    """``U(-b, b)`` with ``b = gain * sqrt(3 / fan)``: ``nn.init.kaiming_uniform_``."""
    def init(key: Key, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        fan = fans(shape)[0 if mode == "fan_in" else 1]
        return uniform(gain * math.sqrt(3.0 / fan))(key, shape, dtype)
    return init


def torch_default(key: Key, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``torch.nn.Linear``/``Conv2d``'s default weight: kaiming-uniform with ``a=sqrt(5)``,
    which is ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    return uniform(1.0 / math.sqrt(fans(shape)[0]))(key, shape, dtype)


def torch_default_bias(fan_in: int) -> Initializer:
    """``torch.nn.Linear``/``Conv2d``'s default bias: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    return uniform(1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0)


#: Names accepted by ``weight_init`` arguments (the seed's MLP uses the first three).
BY_NAME: dict[str, Initializer] = {
    "xavier": xavier_uniform(),
    "he": he_normal(),
    "normal": normal(0.02),
    "xavier_normal": xavier_normal(),
    "he_uniform": he_uniform(),
    "torch": torch_default,
}


def get(name_or_fn: str | Initializer) -> Initializer:
    """Look up an initialiser by name (see ``BY_NAME``) or pass a callable through."""
    if callable(name_or_fn):
        return name_or_fn
    if name_or_fn not in BY_NAME:
        raise ValueError(f"unknown weight_init {name_or_fn!r}; expected one of {sorted(BY_NAME)} or a callable")
    return BY_NAME[name_or_fn]

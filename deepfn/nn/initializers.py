"""Weight initialisers: pure functions ``(key, shape, dtype) -> Tensor``.

Fan computations follow ``torch.nn.init``: for a weight ``[out, in, *kernel]``,
``fan_in = in * prod(kernel)`` and ``fan_out = out * prod(kernel)``.

Layers take them as arguments, as Flax and Equinox do (``Dense(kernel_init=..., bias_init=...)``,
``Embedding(embedding_init=...)``, ``LayerNorm(scale_init=..., bias_init=...)``): ``None`` is
PyTorch's default for that layer, a name is looked up in :data:`BY_NAME`, a callable is used as
it is. :func:`check_field` validates such a field at construction, :func:`draw` calls it in
``init`` and checks what it returns.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import torch

from .. import random
from .._checks import describe, takes_positional, where
from ..typing import Key

__all__ = [
    "BY_NAME", "check_field", "draw", "fans", "get", "he_normal", "he_uniform", "normal", "ones", "torch_default",
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



def check_field(owner: object, name: str, value: object) -> None:
    """Construction-time check of an initializer field of ``owner``: ``None``, a name of
    :data:`BY_NAME` or a callable ``(key, shape, dtype) -> Tensor``.

    Raises:
        ValueError: an unknown name (the known ones are listed).
        TypeError: anything else that is not callable, or a callable that cannot take
            ``(key, shape, dtype)``.
    """
    block = type(owner).__name__
    if callable(value) and not takes_positional(value, 3):
        raise TypeError(f"{block}: {name} must take (key, shape, dtype) and return a Tensor; got "
                        f"{getattr(value, '__qualname__', type(value).__name__)}{_signature(value)}")
    if value is None or callable(value):
        return
    if isinstance(value, str):
        if value not in BY_NAME:
            raise ValueError(f"{block}: {name} must be None, a callable (key, shape, dtype) -> Tensor or "
                             f"one of {sorted(BY_NAME)}; got {value!r}")
        return
    raise TypeError(f"{block}: {name} must be None, a callable (key, shape, dtype) -> Tensor or a name "
                    f"of initializers.BY_NAME; got {type(value).__name__} {value!r}")


def _signature(fn: object) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return ""


def draw(owner: object, name: str, value: str | Initializer | None, default: Initializer, key: Key,
         shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``owner``'s param drawn by its initializer field ``name`` (``default`` when ``value`` is None).

    Returns:
        A ``dtype`` tensor of ``shape`` on ``key``'s device.

    Raises:
        TypeError: the initializer returned something other than a tensor of ``dtype``.
        ValueError: it returned another shape, or a tensor on another device than ``key``.
    """
    fn = default if value is None else get(value)
    out = fn(key, tuple(shape), dtype)
    if not isinstance(out, torch.Tensor) or out.dtype != dtype:
        raise TypeError(f"{where(owner, 'init')}: {name} must return a {str(dtype).removeprefix('torch.')} "
                        f"tensor of shape {list(shape)}; got {describe(out)}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{where(owner, 'init')}: {name} must return shape {list(shape)}; got {describe(out)}")
    if out.device != key.device:
        raise ValueError(f"{where(owner, 'init')}: {name} must return a tensor on the key's device "
                         f"({key.device}); got one on {out.device}")
    return out

"""Explicit random keys with a counter-based generator (Threefry-2x32, 20 rounds).

A key is an ``int64 [2]`` tensor holding two unsigned 32-bit words. Every function is a
pure function of its key: no ``torch.Generator``, no global RNG, so the same key gives the
same bits eagerly, under ``torch.compile``, under ``vmap`` (a batch of keys gives a batch of
independent samples) and on any device. The cipher is one operator (``deepfn.random.threefry``):
one node in compiled graphs, one batched call under ``vmap``, plain tensor code eagerly.

Examples:
    >>> from deepfn import random
    >>> k_init, k_drop = random.split(random.key(0))
    >>> random.uniform(k_init, (2, 3)).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import math
import typing
from collections.abc import Sequence

import torch

from .._checks import describe as _describe
from .._torch import plain_eager as _plain_eager
from . import draw as _draw
from . import threefry as _threefry

__all__ = ["key", "split", "fold_in", "bits", "uniform", "normal", "bernoulli", "randint", "permutation",
           "categorical"]

_threefry2x32 = _threefry.call


_MASK = 0xFFFFFFFF

if typing.TYPE_CHECKING:   # annotations only: not a name of the package
    Shape = int | Sequence[int] | torch.Size


def _check_key(k: torch.Tensor, fn: str) -> None:
    if not isinstance(k, torch.Tensor) or k.dtype != torch.int64:
        raise TypeError(f"deepfn.random.{fn}: key must be an int64 tensor [2] from random.key(seed); got {_describe(k)}")
    if k.shape[-1:] != (2,):
        raise ValueError(f"deepfn.random.{fn}: key must have shape [2] (or [..., 2]), as random.key(seed) gives; got {_describe(k)}")


def _check_float_dtype(dtype: torch.dtype, fn: str) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"deepfn.random.{fn}: dtype must be a floating torch.dtype; got {dtype!r}")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _shape(shape: Shape, fn: str) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    out = tuple(shape)
    if not all(_is_int(s) and s >= 0 for s in out):
        raise ValueError(f"deepfn.random.{fn}: shape must be non-negative ints; got {shape!r}")
    return out


def key(seed: int) -> torch.Tensor:
    """A key from an integer seed: ``int64 [2]``, words ``(seed >> 32, seed & 0xFFFFFFFF)``."""
    if not _is_int(seed):
        raise TypeError(f"deepfn.random.key: seed must be an int; got {type(seed).__name__} {seed!r}")
    seed &= (1 << 64) - 1
    return torch.tensor([seed >> 32, seed & _MASK], dtype=torch.int64)


def bits(key: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` random 32-bit words as ``int64 [n]`` in ``[0, 2**32)``."""
    _check_key(key, "bits")
    if not _is_int(n) or n < 0:
        raise ValueError(f"deepfn.random.bits: n must be a non-negative int; got {n!r}")
    return _draw.sample(key, n, torch.int64)


def split(key: torch.Tensor, num: int = 2) -> torch.Tensor:
    """``num`` new independent keys, ``int64 [num, 2]``; unpack as ``k1, k2 = split(k)``."""
    _check_key(key, "split")
    if not _is_int(num) or num < 1:
        raise ValueError(f"deepfn.random.split: num must be a positive int; got {num!r}")
    counter = torch.arange(num, dtype=torch.int64, device=key.device)
    k0, k1 = key.chunk(2, dim=-1)
    # Domain separation from bits(): keys use the high counter word 1, bits() uses 0.
    y0, y1 = _threefry2x32(k0, k1, counter.new_ones(1), counter)
    return torch.stack([y0, y1], dim=-1)


def fold_in(key: torch.Tensor, data: int | torch.Tensor) -> torch.Tensor:
    """A new key from ``key`` and an integer ``data`` (e.g. a step or a rank).

    ``data`` may be a Python int or a 0-d integer tensor (a traced step counter).
    """
    _check_key(key, "fold_in")
    if isinstance(data, torch.Tensor):
        if data.is_floating_point() or data.dtype == torch.bool or data.ndim != 0:
            raise TypeError(f"deepfn.random.fold_in: data must be an int or 0-d integer tensor; got {_describe(data)}")
        d = data.to(device=key.device, dtype=torch.int64)
        hi, lo = ((d >> 32) & _MASK) | (1 << 31), d & _MASK
    elif isinstance(data, int) and not isinstance(data, bool):
        d_int = data & ((1 << 63) - 1)
        # The counter words straight from the int: one small tensor instead of four ops.
        hi, lo = torch.tensor([((d_int >> 32) & _MASK) | (1 << 31), d_int & _MASK], dtype=torch.int64,
                              device=key.device).unbind()
    else:
        raise TypeError(f"deepfn.random.fold_in: data must be an int; got {type(data).__name__} {data!r}")
    # (The set high bit of the first counter word keeps fold_in apart from split.)
    k0, k1 = key.unbind(-1)
    y0, y1 = _threefry2x32(k0, k1, hi, lo)
    return torch.stack([y0, y1], dim=-1)


def _unit(key: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Uniform ``[0, 1)`` in ``dtype``'s working precision (float64 for float64, else float32).

    The top bits of each word give the mantissa, so every value is an exact multiple of
    2**-24 (float32) or 2**-53 (float64) and 1.0 is never produced.
    """
    n = math.prod(shape)
    if dtype == torch.float64:
        w = bits(key, 2 * n)
        hi, lo = w[..., :n] >> 6, w[..., n:] >> 5         # 26 + 27 = 53 bits
        u = (hi * (1 << 27) + lo).to(torch.float64) * 2.0 ** -53
    else:
        u = _draw.sample(key, n, torch.float32)
    return u.reshape((*key.shape[:-1], *shape))


def uniform(key: torch.Tensor, shape: Shape, dtype: torch.dtype = torch.float32,
            low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Uniform samples in ``[low, high)`` of ``dtype`` on the key's device."""
    _check_key(key, "uniform")
    shape = _shape(shape, "uniform")
    _check_float_dtype(dtype, "uniform")
    if isinstance(low, bool) or isinstance(high, bool) or not isinstance(low, (int, float)) \
            or not isinstance(high, (int, float)):
        raise TypeError(f"deepfn.random.uniform: low and high must be Python numbers; got {low!r}, {high!r}")
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"deepfn.random.uniform: low and high must be finite; got low={low}, high={high}")
    if not high > low:
        raise ValueError(f"deepfn.random.uniform: need low < high; got low={low}, high={high}")
    if not math.isfinite(high - low):
        raise ValueError(f"deepfn.random.uniform: high - low must be finite (it scales the draws); got "
                         f"low={low}, high={high}")
    u = _unit(key, shape, dtype)
    if low == 0.0 and high == 1.0 and u.dtype == dtype:
        return u   # already in [0, 1): the affine map and the clamp below would change nothing
    x = (low + (high - low) * u).to(dtype)
    # Rounding to a narrow dtype may land on `high`; keep the interval half-open.
    top = torch.nextafter(torch.tensor(high, dtype=dtype), torch.tensor(low, dtype=dtype)).to(key.device)
    return torch.minimum(x, top)


def normal(key: torch.Tensor, shape: Shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal samples (Box-Muller) of ``dtype`` on the key's device."""
    _check_key(key, "normal")
    shape = _shape(shape, "normal")
    _check_float_dtype(dtype, "normal")
    # The math runs in float64: eager and compiled kernels differ by an ulp of float64, which
    # rounding to float32 hides, so compiled and eager samples agree bit for bit. Narrow
    # dtypes need only 24-bit uniforms (one word each), float64 needs 53-bit ones.
    n = math.prod(shape)
    compiling = torch.compiler.is_compiling()
    if dtype == torch.float64:
        k_radius, k_angle = split(key).unbind(-2)
        u, v = _unit(k_radius, shape, torch.float64), _unit(k_angle, shape, torch.float64)
    else:
        u = _draw.sample(key, 2 * n, torch.float64)   # the words' top 24 bits
        batched = (*key.shape[:-1], *shape)
        u, v = u[..., :n].reshape(batched), u[..., n:].reshape(batched)
    return _box_muller(u, v, compiling).to(dtype)


def _box_muller(u: torch.Tensor, v: torch.Tensor, compiling: bool) -> torch.Tensor:
    """``sqrt(-2 log(1 - u)) * cos(2 pi v)`` for uniforms ``u``, ``v`` in ``[0, 1)`` (``1 - u`` in
    ``(0, 1]``: the log stays finite); ``u`` and ``v`` are the caller's own temporaries.

    Compiled: out of place, a chain Inductor fuses into one loop (written in place it fused
    less, and ran slower). Eagerly: in place on ``u`` and ``v``, the same kernels and numbers
    without a fresh float64 tensor (and its page faults) per op, which is faster.
    """
    if compiling:
        return torch.sqrt(-2.0 * torch.log(1.0 - u)) * torch.cos(2.0 * math.pi * v)
    return u.neg_().add_(1.0).log_().mul_(-2.0).sqrt_().mul_(v.mul_(2.0 * math.pi).cos_())


def bernoulli(key: torch.Tensor, p: float | torch.Tensor, shape: Shape) -> torch.Tensor:
    """Bool samples, ``True`` with probability ``p`` (``p`` broadcasts against ``shape``).

    Raises:
        TypeError: ``p`` is neither a real number nor a real tensor.
        ValueError: ``p`` outside ``[0, 1]`` or NaN (a tensor ``p`` is read for this only
            eagerly on plain tensors: not under ``torch.compile`` or ``torch.func`` transforms).
    """
    _check_key(key, "bernoulli")
    if not isinstance(p, torch.Tensor):
        if isinstance(p, bool) or not isinstance(p, (int, float)):
            raise TypeError(f"deepfn.random.bernoulli: p must be a float or a tensor; got {type(p).__name__} {p!r}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"deepfn.random.bernoulli: p must lie in [0, 1]; got {p!r}")
    else:
        if p.is_complex() or p.dtype == torch.bool:
            raise TypeError(f"deepfn.random.bernoulli: p must be a real (float) tensor; got {_describe(p)}")
        if _plain_eager([p]):
            bad = ~((p >= 0) & (p <= 1))   # NaN is bad too
            if bool(bad.any()):
                raise ValueError(f"deepfn.random.bernoulli: p must lie in [0, 1]; got {float(p[bad][0])} "
                                 f"in {_describe(p)}")
    return _unit(key, _shape(shape, "bernoulli"), torch.float32) < p


def randint(key: torch.Tensor, shape: Shape, low: int, high: int) -> torch.Tensor:
    """Integers in ``[low, high)``, ``int64``, from 63 random bits (bias below 2**-31 for ranges < 2**32)."""
    _check_key(key, "randint")
    shape = _shape(shape, "randint")
    if not (_is_int(low) and _is_int(high)):
        raise TypeError(f"deepfn.random.randint: low and high must be ints; got low={low!r}, high={high!r}")
    if not low < high <= low + 2**62:
        raise ValueError(f"deepfn.random.randint: need low < high <= low + 2**62; got low={low!r}, high={high!r}")
    n = math.prod(shape)
    w = bits(key, 2 * n)
    r = ((w[..., :n] >> 1) << 32) | w[..., n:]
    return (low + torch.remainder(r, high - low)).reshape((*key.shape[:-1], *shape))


def permutation(key: torch.Tensor, n: int) -> torch.Tensor:
    """A random permutation of ``range(n)`` (``int64 [n]``), by sorting 63-bit random keys."""
    _check_key(key, "permutation")
    if not _is_int(n) or n < 0:
        raise ValueError(f"deepfn.random.permutation: n must be a non-negative int; got {n!r}")
    w = bits(key, 2 * n)
    sort_keys = ((w[..., :n] >> 1) << 32) | w[..., n:]
    return torch.argsort(sort_keys, dim=-1, stable=True)


def categorical(key: torch.Tensor, logits: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """Indices along ``axis`` drawn with probabilities ``softmax(logits, axis)``: ``int64``.

    Gumbel-max: ``argmax(logits + g, axis)`` with ``g = -log(-log(u))`` for uniforms ``u`` in
    ``(0, 1)``, one per logit. The noise and the sum are float64 whatever the logits' dtype,
    so ``u``'s 24 random bits and the logits' precision set the resolution, not a float32
    rounding of ``logits + g``. A ``-inf`` logit is never drawn (its sum stays ``-inf``);
    a slice of all ``-inf`` gives index 0. NaN logits are not checked (that would read the
    values, which a compiled graph cannot do for free) and give an unspecified index.

    Args:
        key: ``int64 [2]``, or ``[..., 2]`` for a batch of keys (the key's batch axes lead
            the result, as for :func:`uniform`).
        logits: ``[...]`` floating, unnormalised log-probabilities; at least one axis.
        axis: the axis of the categories (an int in ``[-logits.ndim, logits.ndim)``).

    Returns:
        ``int64`` indices in ``[0, logits.shape[axis])`` of shape ``logits.shape`` without
        ``axis`` (key batch axes first), on the logits' device.

    Raises:
        TypeError: ``logits`` is not a floating tensor, or ``axis`` is not an int.
        ValueError: ``axis`` out of range, or ``logits`` has no category along it.

    Example:
        >>> from deepfn import random
        >>> logits = torch.tensor([[0.0, float("-inf"), 0.0], [5.0, 0.0, -5.0]])
        >>> random.categorical(random.key(0), logits).shape
        torch.Size([2])
    """
    _check_key(key, "categorical")
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"deepfn.random.categorical: logits must be a floating tensor; got {_describe(logits)}")
    if not _is_int(axis):
        raise TypeError(f"deepfn.random.categorical: axis must be an int; got {type(axis).__name__} {axis!r}")
    if not -logits.ndim <= axis < logits.ndim:
        raise ValueError(f"deepfn.random.categorical: axis must lie in [{-logits.ndim}, {logits.ndim}) for "
                         f"logits {_describe(logits)}; got axis={axis}")
    if logits.shape[axis] == 0:
        raise ValueError(f"deepfn.random.categorical: logits need at least one category along axis {axis}; "
                         f"got {_describe(logits)}")
    shape = tuple(logits.shape)
    u = _draw.sample(key.to(logits.device), math.prod(shape), torch.float64)   # multiples of 2**-24 in [0, 1)
    u = (u + 2.0 ** -25).reshape((*key.shape[:-1], *shape))                    # exact: now in (0, 1)
    gumbel = -torch.log(-torch.log(u))
    # A negative axis counts from the end, so the key's leading batch axes do not move it.
    return torch.argmax(logits.to(torch.float64) + gumbel, dim=axis - logits.ndim if axis >= 0 else axis)

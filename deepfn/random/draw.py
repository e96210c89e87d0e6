"""The words of ``random.bits`` (or their float uniforms) in one pass of the C loop, eagerly
and as one operator in compiled CPU code.

``words(key, n)`` is the definition: the cipher of counters ``(0, i)``, ``i < ceil(n / 2)``,
under ``key`` (``int64 [..., 2]``), every first output word then every second one, cut to
``n``. Written as tensor code it is a counter array, the cipher and a concatenation of its
two ``int64`` halves; a uniform adds a shift-and-convert pass. In a compiled graph that is
~16 bytes written per 32-bit word before the consumer reads one (10^7 compiled uniforms took
~2x the eager C draw's time).

``draw(key, n, dtype)`` gives the same values by :func:`deepfn.random.native.draw`, which
writes the words (``int64``) or ``(word >> 8) * 2**-24`` (``float32``, ``float64``) straight
into the result: directly on plain eager CPU keys, and through the operator
``deepfn::threefry_draw`` under ``torch.compile`` (one extern call in Inductor's code) and
under functorch transforms (its batching rule draws one row per lane's key). Small draws and
other devices keep the tensor code, which Inductor fuses into its consumers (an extern call
costs more than a small draw; accelerators get one pointwise kernel).
"""

from __future__ import annotations

import torch

from .._torch import on_dynamo_import
from . import native as _native
from . import threefry as _threefry

__all__ = ["words", "as_dtype", "threefry_draw", "draw", "sample"]


def words(key: torch.Tensor, n: int) -> torch.Tensor:
    """``int64 [..., n]`` random words in ``[0, 2**32)`` for keys ``int64 [..., 2]``: tensor code."""
    half = (n + 1) // 2
    counter = torch.arange(half, dtype=torch.int64, device=key.device)
    k0, k1 = key.chunk(2, dim=-1)
    y0, y1 = _threefry.call(k0, k1, counter.new_zeros(1), counter)   # words broadcast: (0, i) for i < half
    out = torch.cat([y0, y1], dim=-1)
    return out if 2 * half == n else out.narrow(-1, 0, n)


def as_dtype(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What :func:`draw` makes of words ``w``: themselves (int64) or their top 24 bits times
    2**-24 (float32, float64; exact in both)."""
    return w if dtype == torch.int64 else (w >> 8).to(dtype) * 2.0 ** -24


_DTYPES = (torch.int64, torch.float32, torch.float64)


@torch.library.custom_op("deepfn::threefry_draw", mutates_args=())
def threefry_draw(key: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """``as_dtype(words(key, n), dtype)`` for keys ``int64 [..., 2]``: ``[..., n]`` of ``dtype``."""
    out = _native.draw(key, n, dtype)   # None without the C loop
    return out if out is not None else as_dtype(words(key, n), dtype)


@threefry_draw.register_fake
def _fake(key, n, dtype):
    return key.new_empty((*key.shape[:-1], n), dtype=dtype)


@threefry_draw.register_vmap
def _vmap(info, in_dims, key, n, dtype):
    if in_dims[0] is None:
        return threefry_draw(key, n, dtype), None
    return threefry_draw(key.movedim(in_dims[0], 0), n, dtype), 0   # one row per lane


# See _threefry._overload: Dynamo puts the registered operator into the graph as it is.
_overload = threefry_draw._opoverload


def _native_available() -> bool:
    """Whether the C loop loaded (once per process; a constant to Dynamo, not a graph break)."""
    return _native.native() is not None


on_dynamo_import(lambda: torch.compiler.assume_constant_result(_native_available))


def draw(key: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor | None:
    """``as_dtype(words(key, n), dtype)`` (``[..., n]``) for keys ``int64 [..., 2]`` by the C
    loop, where that pays: plain eager CPU keys, or CPU keys in a compiled graph or under a
    transform drawing at least ``_threefry._EXTERN_MIN_PAIRS`` word pairs (per ``vmap`` lane).
    ``None`` otherwise: the caller computes it as tensor code."""
    if dtype not in _DTYPES or key.device.type != "cpu":
        return None
    if _threefry.directly_callable(key):
        return _native.draw(key, n, dtype)
    if key.shape[:-1].numel() * ((n + 1) // 2) >= _threefry._EXTERN_MIN_PAIRS and _native_available():
        return _overload(key, n, dtype)
    return None


def sample(key: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """``as_dtype(words(key, n), dtype)``: by :func:`draw` where that pays, else as tensor code."""
    out = draw(key, n, dtype)
    return out if out is not None else as_dtype(words(key, n), dtype)

"""Sinusoidal positional encoding added to token embeddings (Vaswani et al., 2017)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import check_dim, check_floating, check_rank, describe, where
from ..typing import Key, Params, State, Tensor

__all__ = ["PositionalEncoding", "sinusoidal_table"]

_HALF = (torch.float16, torch.bfloat16)


def sinusoidal_table(length: int, d_model: int, *, dtype: torch.dtype = torch.float32,
                     device: torch.device | str | None = None) -> Tensor:
    """The table ``pe [length, d_model]``: ``pe[t, 2i] = sin(t * w_i)``, ``pe[t, 2i+1] = cos(t * w_i)``
    with ``w_i = exp(-2i * ln(10000) / d_model)``.

    Computed with the seed's operations in ``dtype``'s working precision (float32 for
    float32 and half dtypes, float64 for float64), so a float32 table is the seed's buffer
    bit for bit on CPU and a float64 table is accurate to float64 rounding. An odd
    ``d_model`` is allowed (the last column is a sine).
    """
    work = torch.float64 if dtype == torch.float64 else torch.float32
    position = torch.arange(length, dtype=work, device=device).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d_model, 2, device=device).to(work) * (-math.log(10000.0) / d_model))
    angle = position * freq                                   # [t, ceil(d_model / 2)]
    # Interleave sin/cos columns with stack + reshape: no in-place slice writes (vmap/compile safe).
    table = torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).flatten(-2)
    return table[:, :d_model].to(dtype)


@dataclass(frozen=True)
class PositionalEncoding:
    """Add the sinusoidal table to ``x [b, t, e]`` (``e == d_model``, ``t <= max_len``).

    The table follows from the config alone: it lives in neither ``params`` nor ``state``
    (both ``{}``) and is computed on x's device in x's dtype at each call, which
    ``torch.compile`` folds into the graph (``t`` is a static shape). The seed's
    ``PositionalEncoding`` stores it as a ``[max_len, 1, d_model]`` buffer and adds it to
    sequence-first input; deepfn is batch-first.

    Twin: the seed's ``PositionalEncoding`` (no ``torch.nn`` module has one).
    """

    d_model: int
    max_len: int = 5000

    def __post_init__(self) -> None:
        for name in ("d_model", "max_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"PositionalEncoding: {name} must be a positive int; got {value!r}")

    def init(self, key: Key) -> tuple[Params, State]:
        return {}, {}

    def table(self, length: int, *, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> Tensor:
        """The first ``length`` rows of the table, ``[length, d_model]``."""
        return sinusoidal_table(length, self.d_model, dtype=dtype, device=device)

    def apply(self, params: Params, state: State, x: Tensor, *, key: Key | None = None,
              train: bool = False) -> tuple[Tensor, State]:
        """Add positions ``0 .. t-1``.

        Args:
            x: ``[b, t, e]`` (or ``[t, e]``), floating, ``e == d_model``, ``t <= max_len``.

        Returns:
            ``(x + pe[:t], state)`` of x's shape and dtype; ``state`` unchanged.

        Raises:
            TypeError: ``x`` is not floating point.
            ValueError: wrong rank, ``e != d_model`` or ``t > max_len``.
        """
        check_floating(self, "x", x)
        check_rank(self, "x", x, (2, 3), layout="[B, T, d_model] (or [T, d_model])")
        check_dim(self, "x", x, axis=-1, size=self.d_model, hyper="d_model")
        length = x.shape[-2]
        if length > self.max_len:
            raise ValueError(
                f"{where(self)}: x has {length} positions, more than max_len={self.max_len}; "
                f"got {describe(x)}"
            )
        return x + self.table(length, dtype=x.dtype, device=x.device), state

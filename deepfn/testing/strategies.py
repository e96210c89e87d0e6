"""Hypothesis strategies for deepfn tests: keys, tensors, padding masks, token batches, shapes.

Needs ``hypothesis`` (``pip install deepfn[testing]``); ``import deepfn`` and
``deepfn.testing.check_block`` do not. Sizes may be ints or strategies of ints.

Examples:
    >>> from hypothesis import given
    >>> from deepfn.testing import check_block, strategies as dst
    >>> @given(x=dst.arrays((4, 16)), k=dst.keys())
    ... def test_my_block(x, k):
    ...     check_block(MyBlock(16, 32), x, key=k)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch

from .. import random

try:
    from hypothesis import strategies as st
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("deepfn.testing.strategies needs hypothesis: pip install 'deepfn[testing]' "
                      "(or pip install hypothesis); check_block and the mask checks work without it") from err

__all__ = ["keys", "seeds", "arrays", "padding_masks", "token_batches", "batch_sizes", "dims", "shapes"]

#: Above this many elements a tensor is drawn from a seed (one deepfn.random call) instead of
#: element by element: hypothesis would spend its whole data budget on one draw.
ELEMENTWISE_LIMIT = 1024

Size = int | st.SearchStrategy[int]


def _size(value: Size, name: str) -> st.SearchStrategy[int]:
    if isinstance(value, st.SearchStrategy):
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"deepfn.testing.strategies: {name} must be a non-negative int or a strategy; got {value!r}")
    return st.just(value)


def seeds() -> st.SearchStrategy[int]:
    """Integer seeds in ``[0, 2**63)``."""
    return st.integers(0, 2**63 - 1)


def keys() -> st.SearchStrategy[torch.Tensor]:
    """Keys ``random.key(seed)`` (``int64 [2]``) of drawn seeds."""
    return seeds().map(random.key)


def batch_sizes(min_value: int = 1, max_value: int = 4) -> st.SearchStrategy[int]:
    """Small batch sizes (default 1..4): eager property tests stay fast."""
    return st.integers(min_value, max_value)


def dims(min_value: int = 1, max_value: int = 8) -> st.SearchStrategy[int]:
    """Small feature or sequence sizes (default 1..8)."""
    return st.integers(min_value, max_value)


def shapes(min_dims: int = 1, max_dims: int = 3, min_side: int = 1, max_side: int = 5) -> st.SearchStrategy[tuple[int, ...]]:
    """Tuples of ``min_dims..max_dims`` sides, each in ``min_side..max_side``."""
    return st.lists(st.integers(min_side, max_side), min_size=min_dims, max_size=max_dims).map(tuple)


def _floats(dtype: torch.dtype, low: float, high: float) -> st.SearchStrategy[float]:
    width = 16 if dtype == torch.float16 else 32 if dtype in (torch.float32, torch.bfloat16) else 64
    return st.floats(low, high, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=width)


def _elements(dtype: torch.dtype, low: float, high: float) -> st.SearchStrategy[Any]:
    if dtype == torch.bool:
        return st.booleans()
    if dtype.is_floating_point:
        return _floats(dtype, low, high)
    if dtype.is_complex:
        raise TypeError(f"deepfn.testing.strategies.arrays: complex dtypes are not supported; got {dtype}")
    info = torch.iinfo(dtype)
    return st.integers(max(int(low), info.min), min(int(high), info.max))


def _from_seed(shape: tuple[int, ...], dtype: torch.dtype, low: float, high: float) -> st.SearchStrategy[torch.Tensor]:
    def make(seed: int) -> torch.Tensor:
        k = random.key(seed)
        if dtype == torch.bool:
            return random.bernoulli(k, 0.5, shape)
        if dtype.is_floating_point:
            wide = torch.float64 if dtype == torch.float64 else torch.float32
            return random.uniform(k, shape, dtype=wide, low=low, high=high).to(dtype)
        return random.randint(k, shape, int(low), int(high) + 1).to(dtype)
    return seeds().map(make)


def arrays(shape: tuple[int, ...] | st.SearchStrategy[tuple[int, ...]], dtype: torch.dtype = torch.float32, *,
           min_value: float = -10.0, max_value: float = 10.0) -> st.SearchStrategy[torch.Tensor]:
    """Tensors of ``shape`` and ``dtype`` with finite values in ``[min_value, max_value]``.

    Floats exclude NaN, inf and subnormals. Up to ``ELEMENTWISE_LIMIT`` elements every element
    is drawn (and shrinks) on its own; larger tensors come from a drawn seed.
    """
    if isinstance(shape, st.SearchStrategy):
        return shape.flatmap(lambda s: arrays(s, dtype, min_value=min_value, max_value=max_value))
    if isinstance(shape, int):
        shape = (shape,)
    shape = tuple(shape)
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise ValueError(f"deepfn.testing.strategies.arrays: shape must be non-negative ints; got {shape!r}")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"deepfn.testing.strategies.arrays: dtype must be a torch.dtype; got {dtype!r}")
    if not min_value <= max_value:
        raise ValueError(f"deepfn.testing.strategies.arrays: min_value must be <= max_value; got "
                         f"{min_value!r} > {max_value!r}")
    n = 1
    for s in shape:
        n *= s
    if n > ELEMENTWISE_LIMIT:
        return _from_seed(shape, dtype, min_value, max_value)
    elements = _elements(dtype, min_value, max_value)
    return st.lists(elements, min_size=n, max_size=n).map(
        lambda values: torch.tensor(values, dtype=dtype).reshape(shape))


def _lengths_mask(lengths: list[int], length: int) -> torch.Tensor:
    return torch.arange(length).unsqueeze(0) < torch.tensor(lengths, dtype=torch.int64).reshape(-1, 1)


def padding_masks(batch: Size, length: Size) -> st.SearchStrategy[torch.Tensor]:
    """Bool ``[batch, length]`` masks: each row True on a non-empty prefix, False after it."""
    @st.composite
    def draw_mask(draw: st.DrawFn) -> torch.Tensor:
        b, t = draw(_size(batch, "batch")), draw(_size(length, "length"))
        if t < 1:
            raise ValueError(f"deepfn.testing.strategies.padding_masks: length must be >= 1; got {t}")
        lengths = draw(st.lists(st.integers(1, t), min_size=b, max_size=b))
        return _lengths_mask(lengths, t)
    return draw_mask()


def token_batches(batch: Size, length: Size, vocab: int, pad_id: int = 0) -> st.SearchStrategy[torch.Tensor]:
    """``int64 [batch, length]`` token ids: each row a non-empty prefix of ids in
    ``[0, vocab)`` other than ``pad_id``, then ``pad_id`` (``tokens != pad_id`` is the mask)."""
    if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 2:
        raise ValueError(f"deepfn.testing.strategies.token_batches: vocab must be an int >= 2 (pad + one "
                         f"token); got {vocab!r}")
    if isinstance(pad_id, bool) or not isinstance(pad_id, int) or not 0 <= pad_id < vocab:
        raise ValueError(f"deepfn.testing.strategies.token_batches: pad_id must be in [0, {vocab}); got {pad_id!r}")
    ids = st.integers(0, vocab - 2).map(lambda i: i + (i >= pad_id))  # every id except pad_id

    @st.composite
    def draw_tokens(draw: st.DrawFn) -> torch.Tensor:
        mask = draw(padding_masks(batch, length))
        values = draw(st.lists(ids, min_size=mask.numel(), max_size=mask.numel()))
        tokens = torch.tensor(values, dtype=torch.int64).reshape(mask.shape)
        return torch.where(mask, tokens, torch.full_like(tokens, pad_id))
    return draw_tokens()

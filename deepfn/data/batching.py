"""Mini-batches over a tuple of tensors, in order or in a keyed random order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .. import random
from .._checks import describe

__all__ = ["batches"]

_WHERE = "deepfn.data.batches"


def batches(data: Sequence[torch.Tensor], batch_size: int, *, key: torch.Tensor | None = None,
            drop_last: bool = False) -> Iterator[tuple[torch.Tensor, ...]]:
    """Iterate over mini-batches of equally long tensors.

    Arguments are checked when ``batches`` is called, not at the first ``next``.

    Args:
        data: a tuple of tensors ``[n, ...]`` with the same leading size ``n`` (e.g. ``(x, y)``).
        batch_size: rows per batch, a positive int.
        key: with a key, rows come in the order of ``random.permutation(key, n)``
            (a new key per epoch gives a new order); without, in stored order.
        drop_last: drop a final batch smaller than ``batch_size``.

    Returns:
        A generator of tuples ``(data[0][rows], data[1][rows], ...)``, each ``[batch_size, ...]``
        (the last may be shorter unless ``drop_last``).

    Raises:
        TypeError: ``data`` is not a sequence of tensors, or ``key`` is not an int64 key.
        ValueError: ``data`` is empty, leading sizes differ, or ``batch_size`` is not positive.

    Examples:
        >>> x, y = torch.arange(10).reshape(5, 2), torch.arange(5)
        >>> [b[1].tolist() for b in batches((x, y), 2)]
        [[0, 1], [2, 3], [4]]
    """
    if isinstance(data, torch.Tensor) or not isinstance(data, (tuple, list)):
        raise TypeError(f"{_WHERE}: data must be a tuple of tensors, e.g. (x, y); got {describe(data)}")
    if len(data) == 0:
        raise ValueError(f"{_WHERE}: data must hold at least one tensor; got an empty {type(data).__name__}")
    for i, t in enumerate(data):
        if not isinstance(t, torch.Tensor) or t.ndim == 0:
            raise TypeError(f"{_WHERE}: data[{i}] must be a tensor with a leading axis; got {describe(t)}")
    n = data[0].shape[0]
    sizes = [t.shape[0] for t in data]
    if any(s != n for s in sizes):
        shapes = ", ".join(describe(t) for t in data)
        raise ValueError(f"{_WHERE}: every tensor needs the same leading size; got {shapes}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{_WHERE}: batch_size must be a positive int; got {batch_size!r}")
    if key is not None and (not isinstance(key, torch.Tensor) or key.dtype != torch.int64 or key.shape != (2,)):
        raise TypeError(f"{_WHERE}: key must be None or an int64 tensor [2] from random.key; got {describe(key)}")
    order = None if key is None else random.permutation(key, n).to(data[0].device)
    return _generate(tuple(data), n, batch_size, order, drop_last)


def _generate(data: tuple[torch.Tensor, ...], n: int, batch_size: int, order: torch.Tensor | None,
              drop_last: bool) -> Iterator[tuple[torch.Tensor, ...]]:
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            yield tuple(t[start:start + batch_size] for t in data)
        else:
            rows = order[start:start + batch_size]
            yield tuple(t[rows.to(t.device)] for t in data)

"""Length bucketing: batches of similar-length sequences, so little of each batch is padding."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import random
from .._checks import describe

__all__ = ["bucket_by_length"]

_WHERE = "deepfn.data.bucket_by_length"


def bucket_by_length(lengths: torch.Tensor, batch_size: int, *,
                     window: int = 100) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A ``batch_order`` for :func:`deepfn.train.fit` that groups rows of similar length.

    Each epoch's shuffled rows are cut into windows of ``window * batch_size`` rows; each
    window is sorted by length (stable, so ties keep their random order) and cut into
    batches; then the order of the complete batches is shuffled with the key, so that short
    and long batches alternate. Rows left over after the last complete batch stay at the
    end (``fit`` drops them with ``drop_last``). Every row still appears exactly once.

    On Multi30k (random batches of 64) bucketing cuts the padded tokens per real token from
    2.3 to 1.4 (widths rounded up to multiples of 8) or about 1.05 (exact widths).

    Args:
        lengths: ``int [n]``, the length of each row of the dataset (e.g. non-pad tokens of
            source plus target).
        batch_size: rows per batch, as passed to ``fit`` (per rank when data parallel).
        window: batches per sorting window; larger windows pad less but are less random.

    Returns:
        ``order(key, rows) -> rows``: takes an epoch's key and the ``int64 [m]`` row indices
        ``fit`` would use (a shuffled shard of ``range(n)``) and returns them rearranged.

    Raises:
        TypeError: ``lengths`` is not a 1-D integer tensor.
        ValueError: ``batch_size`` or ``window`` is not a positive int.

    Examples:
        >>> order = bucket_by_length(torch.tensor([5, 1, 4, 2]), 2, window=2)
        >>> rows = order(random.key(0), torch.arange(4))
        >>> sorted(rows.tolist()), sorted(sorted(torch.tensor([5, 1, 4, 2])[rows].tolist()[i:i + 2])
        ...                                   for i in (0, 2))
        ([0, 1, 2, 3], [[1, 2], [4, 5]])
    """
    if not isinstance(lengths, torch.Tensor) or lengths.ndim != 1 or lengths.is_floating_point() or (
            lengths.is_complex() or lengths.dtype == torch.bool):
        raise TypeError(f"{_WHERE}: lengths must be a 1-D integer tensor [n]; got {describe(lengths)}")
    for name, value in (("batch_size", batch_size), ("window", window)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{_WHERE}: {name} must be a positive int; got {value!r}")
    lengths = lengths.detach().to("cpu", torch.int64)

    def order(key: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        rows_cpu = rows.to("cpu", torch.int64)
        if rows_cpu.ndim != 1 or (rows_cpu.numel() and (int(rows_cpu.min()) < 0
                                                          or int(rows_cpu.max()) >= lengths.numel())):
            raise ValueError(f"{_WHERE}: rows must be 1-D indices into the {lengths.numel()} lengths; "
                             f"got {describe(rows)}")
        span = window * batch_size
        sorted_windows = [chunk[torch.argsort(lengths[chunk], stable=True)] for chunk in rows_cpu.split(span)]
        flat = torch.cat(sorted_windows) if sorted_windows else rows_cpu
        full = flat.numel() // batch_size
        blocks = flat[:full * batch_size].reshape(full, batch_size)
        shuffled = blocks[random.permutation(key.to("cpu"), full)].reshape(-1)
        return torch.cat([shuffled, flat[full * batch_size:]]).to(rows.device)

    return order

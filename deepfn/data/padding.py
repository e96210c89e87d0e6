"""Padding that keeps a compiled step to a few input shapes: a last partial batch padded up to
the full batch with masked rows, and sequences padded up to the next of a few widths.

Why: a compiled step with static shapes compiles once per input shape. A job that feeds it
full batches, padded last batches and a few sequence widths compiles in its first epoch only.
The padding must not change the numbers: padded rows carry labels that the loss and the
metrics leave out (``ignore_index``), and padded positions carry the pad token, which the
model masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._checks import describe

__all__ = ["pad_rows", "bucket_width", "pad_width", "bucket_widths"]


def pad_rows(batch: tuple[Any, Any], rows: int, label: int) -> tuple[Any, Any]:
    """``(inputs, labels)`` with at least ``rows`` rows: the missing ones are copies of the first
    row of every input tensor (real data, so every forward pass stays finite) with every label
    set to ``label`` (the ``ignore_index`` of the loss and the accuracy, so they count nothing).

    Args:
        batch: ``(inputs, labels)``; ``inputs`` a tensor or a tuple of tensors, ``labels`` an
            integer tensor, all with the same leading size ``b >= 1``.
        rows: the batch size to reach; a batch of ``b >= rows`` rows comes back as it is.
        label: the label of the padded rows.

    Returns:
        ``(inputs, labels)``, each ``[max(b, rows), ...]``; the first ``b`` rows are the given ones.

    Raises:
        TypeError: ``batch`` is not such a pair, or ``labels`` is not an integer tensor.
        ValueError: leading sizes differ or are 0, or ``rows`` is not a positive int.
    """
    where = "deepfn.data.pad_rows"
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(f"{where}: batch must be a pair (inputs, labels); got {describe(batch)}")
    inputs, labels = batch
    tensors = list(inputs) if isinstance(inputs, (tuple, list)) else [inputs]
    if not all(isinstance(t, torch.Tensor) and t.ndim >= 1 for t in (*tensors, labels)):
        raise TypeError(f"{where}: inputs (a tensor or tuple of tensors) and labels must be tensors with a "
                        f"leading batch axis; got {describe(inputs)} and {describe(labels)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{where}: labels must be integer class ids; got {describe(labels)}")
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ValueError(f"{where}: rows must be a positive int; got {rows!r}")
    b = labels.shape[0]
    if b == 0 or any(t.shape[0] != b for t in tensors):
        raise ValueError(f"{where}: inputs and labels need the same leading size >= 1; got "
                         f"{[describe(t) for t in tensors]} and {describe(labels)}")
    missing = rows - b
    if missing <= 0:
        return inputs, labels
    grow = lambda t: torch.cat([t, t[:1].expand(missing, *t.shape[1:])])  # noqa: E731
    padded = tuple(grow(t) for t in tensors) if isinstance(inputs, (tuple, list)) else grow(inputs)
    return padded, torch.cat([labels, labels.new_full((missing, *labels.shape[1:]), label)])


def bucket_widths(max_width: int, count: int = 4, multiple: int = 8) -> tuple[int, ...]:
    """``count`` widths spread evenly up to ``max_width``, each rounded up to a multiple of
    ``multiple`` and none above ``max_width`` (fewer when they coincide): the buckets of
    :func:`bucket_width`. ``bucket_widths(64)`` is ``(16, 32, 48, 64)``; ``bucket_widths(12)``
    is ``(8, 12)``."""
    for name, value in (("max_width", max_width), ("count", count), ("multiple", multiple)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"deepfn.data.bucket_widths: {name} must be a positive int; got {value!r}")
    widths = set()
    for i in range(1, count + 1):
        share = -(-max_width * i // count)                  # ceil(max_width * i / count)
        widths.add(min(max_width, -(-share // multiple) * multiple))
    return tuple(sorted(widths))


def bucket_width(length: int, widths: Sequence[int]) -> int:
    """The smallest of ``widths`` that holds ``length`` tokens.

    Raises:
        ValueError: ``length`` exceeds every width, or ``widths`` is empty.
    """
    fits = [w for w in widths if w >= length]
    if not fits:
        raise ValueError(f"deepfn.data.bucket_width: length {length} exceeds the largest width; "
                         f"got widths {list(widths)}")
    return min(fits)


def pad_width(tokens: torch.Tensor, width: int, fill: int) -> torch.Tensor:
    """``tokens [b, t]`` cut or padded with ``fill`` on the right to ``[b, width]``.

    Raises:
        ValueError: ``tokens`` is not 2-D or ``width`` is not a positive int.
    """
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2:
        raise ValueError(f"deepfn.data.pad_width: tokens must be a 2-D tensor [b, t]; got {describe(tokens)}")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"deepfn.data.pad_width: width must be a positive int; got {width!r}")
    if tokens.shape[1] >= width:
        return tokens[:, :width]
    return torch.cat([tokens, tokens.new_full((tokens.shape[0], width - tokens.shape[1]), fill)], dim=1)

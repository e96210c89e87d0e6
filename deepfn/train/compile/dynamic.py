"""Batch dims that change from call to call without a new compile (``dynamic_dims=`` of
:func:`~deepfn.train.make_train_step` and :func:`~deepfn.train.make_eval_step`).

A compiled step is specialized to its inputs' sizes: a Transformer fed batches of 20 widths
compiles 20 times, unless the widths are padded to a few (``data.padding.bucket_width``). With
``dynamic_dims=(1,)`` the first compile takes those sizes as symbols instead, and one program
serves every width. Three places need to know which sizes are symbolic:

- the compile itself: the batch's tensors passed to it carry the marks (on aliases, so the
  caller's tensors are left as they were); every call passes them contiguous, because a
  program compiled for symbolic sizes also holds guards on how strides follow them (a slice of
  a wider tensor, ``tokens[:, :w]``, has stride ``(64, 1)`` where a copy has ``(w, 1)``), and
  batches that mix both would each compile again;
- a saved step's file name (:mod:`deepfn.train.compile.saved`), which leaves those sizes out;
- the history's compile events (:mod:`deepfn.train.compile.signatures`), which count a batch
  as new only when a compile would be.

A dim of size 0 or 1 is not marked (torch specializes such sizes; a later batch of another
size then compiles once more, as a static step would).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ... import _torch, tree

__all__ = ["DynamicDims", "check_dynamic_dims", "shape_without_symbolic", "symbolic_dims"]


def check_dynamic_dims(where: str, dims: Any) -> tuple[int, ...]:
    """``dims`` as a sorted tuple of distinct non-negative ints (``None`` and ``()``: none).
    Raises ``TypeError`` / ``ValueError`` naming ``where`` for anything else."""
    if dims is None:
        return ()
    if isinstance(dims, int) and not isinstance(dims, bool):
        dims = (dims,)
    if not isinstance(dims, (tuple, list)) or any(isinstance(d, bool) or not isinstance(d, int) for d in dims):
        raise TypeError(f"{where}: dynamic_dims must be None, an int or a tuple of ints (dims of every batch "
                        f"tensor, e.g. (1,) for [B, T] widths); got {dims!r}")
    if any(d < 0 for d in dims) or len(set(dims)) != len(dims):
        raise ValueError(f"{where}: dynamic_dims must be distinct non-negative dims (counted from the left, "
                         f"e.g. 0 the batch, 1 a sequence's width); got {dims!r}")
    return tuple(sorted(dims))


def symbolic_dims(tensor: torch.Tensor, dims: tuple[int, ...]) -> tuple[int, ...]:
    """The dims of ``dims`` that a compile takes as symbols for ``tensor``: those it has, of size
    2 or more."""
    return tuple(d for d in dims if d < tensor.dim() and tensor.shape[d] >= 2)


def shape_without_symbolic(tensor: torch.Tensor, dims: tuple[int, ...]) -> tuple[int | None, ...]:
    """``tensor``'s shape with ``None`` for each of its :func:`symbolic_dims`."""
    symbolic = symbolic_dims(tensor, dims)
    return tuple(None if d in symbolic else n for d, n in enumerate(tensor.shape))


@dataclass(frozen=True)
class DynamicDims:
    """``dims`` of every tensor in the arguments at ``positions`` (the batch) are symbolic."""

    positions: tuple[int, ...]
    dims: tuple[int, ...]

    def contiguous(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """``args`` with each batch tensor contiguous (itself when it already is)."""
        return self._map_batch(lambda t: t.contiguous(), args)

    def marked(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """``args`` with each batch tensor replaced by an alias (same storage, sizes and strides)
        whose :func:`symbolic_dims` are marked dynamic for the compile that takes it."""
        def mark(tensor: torch.Tensor) -> torch.Tensor:
            alias = tensor[...]
            _torch.mark_dynamic(alias, symbolic_dims(tensor, self.dims))
            return alias
        return self._map_batch(mark, args)

    def signature(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """``args`` with each batch tensor replaced by a description that leaves out its symbolic
        sizes and its strides (which follow them): what a saved step's file name is made of."""
        return self._map_batch(lambda t: ("tensor with symbolic dims", shape_without_symbolic(t, self.dims),
                                          t.dtype, t.device, t.requires_grad), args)

    def _map_batch(self, fn: Callable[[torch.Tensor], Any], args: tuple[Any, ...]) -> tuple[Any, ...]:
        """``args`` with ``fn`` applied to every tensor of the arguments at ``positions``."""
        def leaf(x: Any) -> Any:
            return fn(x) if isinstance(x, torch.Tensor) else x
        return tuple(tree.map(leaf, a) if i in self.positions else a for i, a in enumerate(args))

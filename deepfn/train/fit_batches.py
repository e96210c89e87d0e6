"""The batches of :func:`~deepfn.train.fit`: data checks, each epoch's order of rows (this
rank's shard when data parallel), and each step's batch and key.

Randomness is a function of the position in training only: epoch ``e`` shuffles with
``fold_in(k_shuffle, e)``, the update that makes ``train_state.step == s + 1`` uses
``fold_in(k_step, s)`` (and ``fold_in(k_augment, s)`` for ``augment``), each folded with the
rank when there are several, so a resumed run continues bit-identically.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import distributed as dist
from .. import random
from .._checks import describe
from ..typing import Key

__all__ = ["leading_size", "take_rows", "as_pair", "world_of", "EpochBatches"]

_FN = "deepfn.train.fit"


def leading_size(data: Any, name: str) -> int:
    """The common leading size of ``data``, a tuple of tensors; ``TypeError`` / ``ValueError`` otherwise."""
    if not isinstance(data, (tuple, list)) or not data or not all(isinstance(t, torch.Tensor) for t in data):
        raise TypeError(f"{_FN}: {name} must be a tuple of tensors (inputs, labels); got {type(data).__name__}")
    sizes = {t.shape[0] if t.ndim else None for t in data}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"{_FN}: every tensor of {name} needs the same leading size; "
                         f"got {[describe(t) for t in data]}")
    return sizes.pop()


def take_rows(data: tuple, index: torch.Tensor | slice) -> tuple:
    """The rows ``index`` (int64 indices or a slice) of every tensor of ``data``."""
    return tuple(t[index.to(t.device)] if isinstance(index, torch.Tensor) else t[index] for t in data)


def as_pair(batch: tuple, batch_fn: Callable[..., tuple[Any, Any]] | None) -> tuple[Any, Any]:
    """``batch_fn(*batch)``, or ``batch`` itself when it is a pair and there is no ``batch_fn``."""
    if batch_fn is not None:
        return batch_fn(*batch)
    if len(batch) != 2:
        raise ValueError(f"{_FN}: data of {len(batch)} tensors needs batch_fn(*tensors) -> (inputs, labels)")
    return batch[0], batch[1]


def world_of(distributed: bool) -> tuple[int, int]:
    """``(rank, world_size)`` of the running process group, ``(0, 1)`` when not distributed."""
    if not isinstance(distributed, bool):
        raise TypeError(f"{_FN}: distributed must be a bool; got {type(distributed).__name__}")
    return (dist.rank(), dist.world_size()) if distributed else (0, 1)


class EpochBatches:
    """This rank's batches of ``train_data``: ``per_epoch`` batches of ``batch_size`` rows (per rank).

    Args:
        data: the training tensors (common leading size).
        batch_size: the global batch size (divided by the world size when ``distributed``).
        key: the run's base key (split into shuffle, step and augment streams).
        distributed, drop_last, batch_fn, augment, batch_order, step_key: as in ``fit``.
    """

    def __init__(self, data: tuple, batch_size: int, key: Key, *, distributed: bool, drop_last: bool,
                 batch_fn: Callable | None, augment: Callable | None, batch_order: Callable | None,
                 step_key: Callable | None) -> None:
        self.rank, self.world = world_of(distributed)
        if batch_size % self.world:
            raise ValueError(f"{_FN}: batch_size={batch_size} is the global batch and must be divisible by the "
                             f"world size; got world_size={self.world}")
        n = leading_size(data, "train_data")
        # Every rank holds shard_size(n, world) examples and reads batch_size / world of them per step.
        self.n, self.n_local = n, (dist.shard_size(n, self.world) if distributed else n)
        self.batch_size = batch_size // self.world if distributed else batch_size
        self.per_epoch = self.n_local // self.batch_size if drop_last else -(-self.n_local // self.batch_size)
        if self.per_epoch == 0:
            each = " per rank" if distributed else ""
            raise ValueError(f"{_FN}: train_data has {self.n_local} examples{each}, fewer than "
                             f"batch_size={self.batch_size}{each} with drop_last=True")
        self.data, self.distributed = data, distributed
        self.batch_fn, self.augment, self.batch_order, self.step_key = batch_fn, augment, batch_order, step_key
        self.k_shuffle, self.k_step, self.k_augment = random.split(key, 3)
        self.k_order = random.split(self.k_shuffle)[0]

    def _own(self, key: Key) -> Key:
        return random.fold_in(key, self.rank) if self.world > 1 else key

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's row indices for ``epoch`` (int64), shuffled and rearranged by ``batch_order``."""
        order = (dist.shard_indices(self.k_shuffle, epoch, self.n, self.rank, self.world) if self.distributed
                 else random.permutation(random.fold_in(self.k_shuffle, epoch), self.n))
        if self.batch_order is None:
            return order
        new = self.batch_order(self._own(random.fold_in(self.k_order, epoch)), order)
        if not isinstance(new, torch.Tensor) or new.shape != order.shape or not torch.equal(
                torch.sort(new.to(order.device)).values, torch.sort(order).values):
            raise ValueError(f"{_FN}: batch_order(key, rows) must return the same {order.numel()} row indices "
                             f"reordered; got {describe(new)}")
        return new.to(order.device)

    def batch(self, order: torch.Tensor, b: int, step: int) -> tuple[tuple[Any, Any], Any, int]:
        """``((inputs, labels), key, rows)`` of batch ``b`` of an epoch, for the update numbered ``step``."""
        rows = take_rows(self.data, order[b * self.batch_size:(b + 1) * self.batch_size])
        inputs, labels = as_pair(rows, self.batch_fn)
        if self.augment is not None:
            inputs = self.augment(self._own(random.fold_in(self.k_augment, step)), inputs)
        key = self._own(random.fold_in(self.k_step, step))
        return (inputs, labels), (self.step_key(key) if self.step_key else key), rows[0].shape[0]

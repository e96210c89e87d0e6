"""Which input signatures a step has met: the bookkeeping behind the compile events that
:func:`~deepfn.train.fit` writes into its history.

A compiled step whose shapes are static (every saved step of
:mod:`~deepfn.train.compile.saved`) compiles, or loads a saved program, once per signature of
its batch: its structure and each tensor's shape, dtype and device (the train state keeps its
shapes from step to step). So the signatures a step met for the first time in an epoch are the
compiles that epoch cost, and a run whose later epochs meet none compiled in its first epoch
only. (The plain ``torch.compile`` of ``compile_cache=None`` may instead recompile once with
symbolic sizes and then serve new sizes without compiling: there, a count of new signatures
is an upper bound.) A step made with ``dynamic_dims`` compiles once for all sizes of those
dims, so they are left out of its signatures (:mod:`deepfn.train.compile.dynamic`). Eager
steps have signatures too: the count is what a compiled step would
have compiled, so a test of the shapes a job feeds needs no compile.

The exact count of compiles is the step's own: :class:`CompileCount` reads the programs a
step made by :func:`~deepfn.train.make_train_step` or :func:`~deepfn.train.make_eval_step`
has compiled or loaded (``step.compiled_programs()``), which also counts what signatures
cannot see: a program compiled again because a guard on a size rejected it, and each saved
variant loaded.
"""

from __future__ import annotations

from typing import Any

import torch

from .dynamic import shape_without_symbolic

__all__ = ["batch_signature", "CompileCount", "SignatureLog"]


def batch_signature(batch: Any, dynamic_dims: tuple[int, ...] = ()) -> tuple[Any, ...]:
    """A hashable description of ``batch``: its nesting of tuples and lists, and for each tensor
    its shape (``None`` for each size that ``dynamic_dims`` makes symbolic), dtype and device
    (other leaves by their type and value)."""
    if isinstance(batch, torch.Tensor):
        return ("tensor", shape_without_symbolic(batch, dynamic_dims), batch.dtype, batch.device)
    if isinstance(batch, (tuple, list)):
        return (type(batch).__name__, *(batch_signature(item, dynamic_dims) for item in batch))
    return (type(batch).__name__, repr(batch))


class SignatureLog:
    """The distinct batch signatures seen so far, and how many were new since the last
    :meth:`take_new`; ``dynamic_dims`` those of the step the batches are for."""

    def __init__(self, dynamic_dims: tuple[int, ...] = ()) -> None:
        self._dims = tuple(dynamic_dims)
        self._seen: set[tuple[Any, ...]] = set()
        self._new = 0

    def see(self, batch: Any) -> None:
        """Record the signature of ``batch`` (a new one counts once)."""
        signature = batch_signature(batch, self._dims)
        if signature not in self._seen:
            self._seen.add(signature)
            self._new += 1

    def take_new(self) -> int:
        """The number of new signatures since the last call (0 when none), and reset it."""
        new, self._new = self._new, 0
        return new

    def __len__(self) -> int:
        return len(self._seen)


class CompileCount:
    """The programs a step has compiled or loaded (``step.compiled_programs()``), and how many
    since the last :meth:`take_new`; ``None`` throughout for a step that does not count them."""

    def __init__(self, step: Any) -> None:
        self._read = getattr(step, "compiled_programs", None)
        self._last = self._now()

    def _now(self) -> int | None:
        return None if self._read is None else self._read()

    def take_new(self) -> int | None:
        """The programs compiled or loaded since the last call (or since it was made), or None
        when the step does not count them."""
        now = self._now()
        new = None if now is None or self._last is None else now - self._last
        self._last = now
        return new

    def record(self, row: dict[str, Any], column: str) -> None:
        """Put :meth:`take_new` into ``row[column]``, unless the step does not count."""
        new = self.take_new()
        if new is not None:
            row[column] = new

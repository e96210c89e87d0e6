"""Donated updates (``make_train_step(donate=True)``): the pure update's numbers, written into
the tensors of the train state the caller gave up (JAX's buffer donation).

What it replaces: the reference update ``optimizer.update`` + ``optim.apply_updates`` into
fresh tensors, then :func:`~deepfn.train.finite.keep_if` to keep the old trees on a skipped
step. Why it is equal:

- eagerly on the CPU the finite flag is read first; a skipped step leaves every tree as it was
  (the reference keeps the old trees too), and an update runs the optimizer's donated form
  (foreach ops in place, as ``torch.optim`` does: ``donate_state`` / ``donate_params``, or the
  optimizer's own ``update.in_place``, AdamW's order of ``torch.optim.AdamW``, equal up to
  float rounding);
- compiled, the reference values are computed and ``copy_``-ed into the old tensors, which
  Inductor fuses into the kernels that compute them;
- eagerly on an accelerator the reference runs as it is (reading the flag would sync; fresh
  memory is cheap in the caching allocator).

Writing in place is only sound when no two leaves share memory: :class:`UnaliasedCheck`
refuses such states.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

from .. import optim
from ..tree import flat as _flat
from ..typing import PyTree, State, Tensor
from .finite import readable_on_host
from .state import TrainState

__all__ = ["make_donated_update", "write_into", "UnaliasedCheck"]

Update = Callable[[TrainState, PyTree, State, Tensor], tuple[PyTree, PyTree, State]]


def make_donated_update(optimizer: Any, reference: Update) -> Update:
    """``update(ts, grads, new_state, ok) -> (params, opt_state, state)`` equal to ``reference``,
    written into ``ts``'s tensors (see the module docstring)."""
    donate_kw = {"donate_state": True} if optim.donates(optimizer) else {}
    # An optimizer's own donated form (AdamW: torch.optim's order, fewer passes), eager only.
    in_place = getattr(optimizer.update, "in_place", None) if donate_kw else None

    def update(ts: TrainState, grads: PyTree, new_state: State, ok: Tensor) -> tuple[PyTree, PyTree, State]:
        if readable_on_host(ok):
            if not bool(ok):
                return ts.params, ts.opt_state, ts.state
            done = in_place(grads, ts.opt_state, ts.params) if in_place is not None else None
            if done is None:
                updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params, **donate_kw)
                done = optim.apply_updates(ts.params, updates, donate_params=True), opt_state
            return done[0], done[1], new_state
        params, opt_state, state = reference(ts, grads, new_state, ok)
        if torch.compiler.is_compiling():
            params, opt_state = write_into(ts.params, params), write_into(ts.opt_state, opt_state)
        return params, opt_state, state

    return update


def write_into(old: PyTree, new: PyTree) -> PyTree:
    """``new``'s values written into ``old``'s tensors (compiled code only); the tree like ``new``."""
    (olds, news), spec = _flat.flatten_alike("deepfn.train", old, new)
    return _flat.unflatten(spec, [o.copy_(n) if isinstance(o, torch.Tensor) and o is not n else n
                                  for o, n in zip(olds, news, strict=True)])


class UnaliasedCheck:
    """Refuses a donated train state whose params or optimizer-state leaves overlap in memory
    (they would be updated twice). Views of one buffer that do not overlap
    (``distributed.broadcast`` returns such) are fine; a strided leaf counts as its whole span.

    Cheap on the common path: the state the last donated step returned holds the buffers
    already checked (and fresh ones), so it is not walked again; any other state is walked
    once, and its spans worked out only when its data pointers changed.
    """

    def __init__(self, where: str) -> None:
        self.where = where
        self._clean_ptrs: tuple[int, ...] | None = None
        self._returned: weakref.ref | None = None

    def __call__(self, ts: TrainState) -> None:
        """Raise ``ValueError`` naming two overlapping leaves of ``ts``."""
        if self._returned is not None and self._returned() is ts:
            return
        both, tensors = _donated_leaves(ts)
        ptrs = tuple(x.data_ptr() for _, x in tensors)
        if ptrs == self._clean_ptrs:
            return
        overlap = _first_overlap(tensors)
        if overlap is not None:
            names = _flat.paths(both)
            raise ValueError(f"{self.where}: the leaves {names[overlap[0]]!r} and {names[overlap[1]]!r} of the "
                             f"train state overlap in memory, so updating them in place would apply two updates "
                             f"to one tensor; give each leaf its own tensor (e.g. tree.map(torch.clone, "
                             f"train_state)) or use donate=False")
        self._clean_ptrs = ptrs

    def returned(self, ts: TrainState) -> None:
        """Remember the state a donated step handed back (checked, so not walked again)."""
        self._returned = weakref.ref(ts)


def _donated_leaves(ts: TrainState) -> tuple[dict[str, PyTree], list[tuple[int, Tensor]]]:
    """The donated trees (params, optimizer state) and their non-empty tensor leaves with indices."""
    both = {"params": ts.params, "opt_state": ts.opt_state}
    leaves = _flat.flatten(both)[0]
    return both, [(i, x) for i, x in enumerate(leaves) if isinstance(x, torch.Tensor) and x.numel()]


def _first_overlap(tensors: list[tuple[int, Tensor]]) -> tuple[int, int] | None:
    """Indices of two tensors whose memory spans overlap, or None."""
    spans = []
    for i, x in tensors:
        extent = 1 + sum((n - 1) * abs(st) for n, st in zip(x.shape, x.stride(), strict=True))
        spans.append((x.data_ptr(), x.data_ptr() + extent * x.element_size(), i))
    spans.sort()
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:], strict=False):
        if begin < end:
            return first, second
    return None

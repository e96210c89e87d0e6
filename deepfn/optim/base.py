"""Gradient transformations (Optax's shape): an ``(init, update)`` pair, composed by ``chain``.

A transformation maps gradients to *updates*, the values added to the parameters::

    opt_state = opt.init(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    params = apply_updates(params, updates)

States are ``NamedTuple``s of tensors (pytrees), so they go through ``vmap``, ``torch.compile``
and checkpoints like any tree. Every step counter is a 0-d ``int64`` tensor named ``count``
on the parameters' device: a Python int would be guarded by Dynamo and recompile per step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .. import tree
from ..typing import PyTree, Tensor
from . import _ops

#: ``step -> learning rate``; a step is an ``int`` or a 0-d integer tensor.
Schedule = Callable[[Any], Any]
ScalarOrSchedule = float | Schedule


class GradientTransformation(NamedTuple):
    """A pure pair ``init(params) -> state`` and ``update(updates, state, params=None) -> (updates, state)``."""

    init: Callable[[PyTree], Any]
    update: Callable[..., tuple[PyTree, Any]]


class EmptyState(NamedTuple):
    """The state of a stateless transformation."""


def identity() -> GradientTransformation:
    """Pass updates through unchanged (a neutral element for ``chain``)."""
    return GradientTransformation(lambda params: EmptyState(), lambda updates, state, params=None: (updates, state))


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply ``transforms`` in order; the state is the tuple of their states.

    Example:
        >>> import torch, deepfn.optim as optim
        >>> opt = optim.chain(optim.clip_by_global_norm(1.0), optim.sgd(lr=0.1))
        >>> p = {"w": torch.ones(2)}
        >>> u, s = opt.update({"w": torch.full((2,), 10.0)}, opt.init(p), p)
        >>> [round(v, 4) for v in u["w"].tolist()]
        [-0.0707, -0.0707]
    """
    for i, t in enumerate(transforms):
        if not isinstance(t, GradientTransformation):
            raise TypeError(f"deepfn.optim.chain: argument {i} must be a GradientTransformation; got {type(t).__name__}")

    def init(params: PyTree) -> tuple[Any, ...]:
        return tuple(t.init(params) for t in transforms)

    def update(updates: PyTree, state: tuple[Any, ...], params: PyTree | None = None) -> tuple[PyTree, tuple]:
        if not isinstance(state, tuple) or len(state) != len(transforms):
            raise ValueError(f"deepfn.optim.chain: state must be a tuple of {len(transforms)} states (from init); "
                             f"got {type(state).__name__}")
        new_states = []
        for t, s in zip(transforms, state, strict=True):
            updates, s = t.update(updates, s, params)
            new_states.append(s)
        return updates, tuple(new_states)

    return GradientTransformation(init, update)


def apply_updates(params: PyTree, updates: PyTree) -> PyTree:
    """``params + updates`` leaf by leaf (out of place); each result keeps its parameter's dtype."""
    check_same_structure("deepfn.optim.apply_updates", "updates", updates, params)
    p_leaves = tree.leaves(params)
    u_leaves = [u.to(p.dtype) for u, p in zip(tree.leaves(updates), p_leaves, strict=True)]
    out = _ops.add(p_leaves, u_leaves, _ops.use_foreach(p_leaves))
    return tree.unflatten_leaves(tree.structure(params), out)


def check_same_structure(where: str, name: str, a: PyTree, params: PyTree) -> None:
    """Raise ``ValueError`` showing both structures when ``a`` and ``params`` differ."""
    sa, sp = tree.structure(a), tree.structure(params)
    if sa != sp:
        raise ValueError(f"{where}: {name} must have the structure of params;\n  {name}: {sa}\n  params: {sp}")


def zero_count(params: PyTree) -> Tensor:
    """A 0-d int64 step counter on the device of the first parameter (CPU for an empty tree)."""
    leaves = [x for x in tree.leaves(params) if isinstance(x, torch.Tensor)]
    device = leaves[0].device if leaves else None
    return torch.zeros((), dtype=torch.int64, device=device)


def check_count(where: str, count: Any) -> None:
    if not isinstance(count, torch.Tensor) or count.dtype != torch.int64 or count.ndim != 0:
        raise TypeError(f"{where}: state.count must be a 0-d int64 tensor (from init); got {_describe(count)}")


def _describe(x: Any) -> str:
    from .._checks import describe
    return describe(x)

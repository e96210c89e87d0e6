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
from .._checks import describe
from ..tree import flat as _flat
from ..typing import PyTree, Tensor
from . import _ops

__all__ = [
    "EmptyState", "GradientTransformation", "Schedule", "ScalarOrSchedule", "apply_updates",
    "chain", "donates", "identity", "mark",
]

#: ``step -> learning rate``; a step is an ``int`` or a 0-d integer tensor.
Schedule = Callable[[Any], Any]
ScalarOrSchedule = float | Schedule


class GradientTransformation(NamedTuple):
    """A pure pair ``init(params) -> state`` and ``update(updates, state, params=None) -> (updates, state)``.

    A schedule given as ``lr`` (or momentum) is called with the state's ``count``, a 0-d
    int64 tensor, so a hand-written schedule must be tensor code (``torch.where``, not ``if``)
    to compile into one graph; deepfn's own schedules are.
    """

    init: Callable[[PyTree], Any]
    update: Callable[..., tuple[PyTree, Any]]


class EmptyState(NamedTuple):
    """The state of a stateless transformation."""


def identity() -> GradientTransformation:
    """Pass updates through unchanged (a neutral element for ``chain``)."""
    return GradientTransformation(lambda params: EmptyState(), lambda updates, state, params=None: (updates, state))


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply ``transforms`` in order; the state is the tuple of their states.

    Examples:
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

    donating = [donates(t) for t in transforms]

    def init(params: PyTree) -> tuple[Any, ...]:
        return tuple(t.init(params) for t in transforms)

    def update(updates: PyTree, state: tuple[Any, ...], params: PyTree | None = None, *,
               donate_state: bool = False, _owned: bool = False) -> tuple[PyTree, tuple]:
        if not isinstance(state, tuple) or len(state) != len(transforms):
            raise ValueError(f"deepfn.optim.chain: state must be a tuple of {len(transforms)} states (from init); "
                             f"got {type(state).__name__}")
        new_states = []
        owned = _owned
        for t, s, d in zip(transforms, state, donating, strict=True):
            kw = {"donate_state": True} if donate_state and d else {}
            if owned and getattr(t.update, "reuses", False):
                updates, s = t.update(updates, s, params, _owned=True, **kw)
            else:
                updates, s = t.update(updates, s, params, **kw)
                owned = getattr(t.update, "fresh", False)
            new_states.append(s)
        return updates, tuple(new_states)

    # Needs the whole gradient tree (a global norm) if any part does: sharded steps refuse it.
    update.whole_tree = any(getattr(t.update, "whole_tree", False) for t in transforms)
    # The flags are static, so a chain's own are too: fresh if its output is owned when its
    # input is not; it takes ownership only if it then hands back an owned output.
    return GradientTransformation(init, mark(update, fresh=_owned_after(transforms, False),
                                             reuses=_owned_after(transforms, True),
                                             donates=any(donating)))


def _owned_after(transforms: tuple[GradientTransformation, ...], owned: bool) -> bool:
    for t in transforms:
        if not (owned and getattr(t.update, "reuses", False)):
            owned = getattr(t.update, "fresh", False)
    return owned


def mark(update: Callable, *, fresh: bool = False, reuses: bool = False, donates: bool = False) -> Callable:
    """Tag an update function for ``chain``'s buffer hand-off (eager speed only, same numbers).

    ``fresh``: its output leaves are new tensors that neither the caller nor the state holds.
    ``reuses``: it takes ``_owned=True`` and may then write into the update leaves it got
    (eager ``_foreach_*_`` ops). ``chain`` passes ``_owned=True`` only after a ``fresh``
    transform, so no tensor the user or a state can see is ever written; pure functions
    stay pure, and each such write saves an allocation per leaf, which dominates eager
    optimizer time on CPU (page faults on fresh memory).
    ``donates``: it takes ``donate_state=True`` (the caller gives up the old state, see
    :func:`donate`), and may then write its new state into the old state's tensors.
    """
    update.fresh = fresh
    update.reuses = reuses
    update.donates = donates
    return update


def donates(opt: GradientTransformation) -> bool:
    """Whether ``opt.update`` takes ``donate_state=True`` (deepfn's Adam, AdamW, SGD and their chains)."""
    return bool(getattr(opt.update, "donates", False))


def apply_updates(params: PyTree, updates: PyTree, *, donate_updates: bool = False,
                  donate_params: bool = False) -> PyTree:
    """``params + updates`` leaf by leaf; each result keeps its parameter's dtype.

    ``params`` are never written unless donated. The numbers are the same either way:

    * ``donate_updates=True``: the sums may be written into the update leaves (eager foreach
      path, same dtypes), saving one allocation of the model's size per step; pass it only
      for updates nobody else holds, such as the fresh output of ``opt.update`` inside a
      training step (``make_train_step`` does).
    * ``donate_params=True``: the caller gives up ``params`` (JAX's buffer donation): the sums
      are written into the parameter tensors (eager: ``_foreach_add_``; under
      ``torch.compile``: ``copy_``, which Inductor fuses into the addition) and returned in a
      new tree. Ignored under ``torch.func`` transforms. Do not read the old ``params``
      afterwards: they hold the new values.
    """
    p_leaves, p_spec = _flat.flatten(params)
    u_leaves, u_spec = _flat.flatten(updates)
    check_specs("deepfn.optim.apply_updates", "updates", u_spec, p_spec, updates, params)
    check_shapes("deepfn.optim.apply_updates", "updates", u_leaves, p_leaves, params)
    fe = _ops.use_foreach(p_leaves)
    if donate_updates and not donate_params and fe and all(
            u.dtype == p.dtype and u.shape == p.shape for u, p in zip(u_leaves, p_leaves, strict=True)):
        _ops.add(u_leaves, p_leaves, fe, inplace=True)   # u + p == p + u exactly (addition commutes)
        return _flat.unflatten(p_spec, u_leaves)
    u_leaves = [u if u.dtype == p.dtype else u.to(p.dtype) for u, p in zip(u_leaves, p_leaves, strict=True)]
    # Donated params: eagerly one in-place foreach add; elsewhere the sum is copied back.
    new = _ops.add(p_leaves, u_leaves, fe, inplace=donate_params)
    if donate_params and not fe:
        new = _ops.write_back(p_leaves, new)
    return _flat.unflatten(p_spec, new)


def check_specs(where: str, name: str, spec: Any, ref_spec: Any, tree_: PyTree, ref: PyTree,
                ref_name: str = "params") -> None:
    """Raise ``ValueError`` showing both structures when two flattened trees differ."""
    if spec != ref_spec:
        raise ValueError(f"{where}: {name} must have the structure of {ref_name};\n"
                         f"  {name}: {tree.structure(tree_)}\n  {ref_name}: {tree.structure(ref)}")


def check_same_structure(where: str, name: str, a: PyTree, params: PyTree) -> None:
    check_specs(where, name, _flat.flatten(a)[1], _flat.flatten(params)[1], a, params)


def zero_count(params: PyTree) -> Tensor:
    """A 0-d int64 step counter on the device of the first parameter (CPU for an empty tree)."""
    leaves = [x for x in _flat.flatten(params)[0] if isinstance(x, torch.Tensor)]
    device = leaves[0].device if leaves else None
    return torch.zeros((), dtype=torch.int64, device=device)


def check_state(where: str, state: Any, cls: type) -> None:
    """Raise ``TypeError`` unless ``state`` is a ``cls`` (the state this transformation's
    ``init`` makes), then check its ``count``: another optimizer's state fails here, named,
    instead of deep inside the update."""
    if not isinstance(state, cls):
        raise TypeError(f"{where}: state must be a {cls.__name__} (from this optimizer's init); "
                        f"got {type(state).__name__} (the state of another optimizer?)")
    if hasattr(cls, "_fields") and "count" in cls._fields:
        check_count(where, state.count)


def check_shapes(where: str, name: str, leaves: list[Any], ref_leaves: list[Any], ref: PyTree,
                 ref_name: str = "params") -> None:
    """Raise ``ValueError`` naming the first leaf whose shape differs from its reference's
    (the structures are already equal): a ``[3]`` update must not broadcast into a ``[3, 1]``
    parameter."""
    for i, (x, r) in enumerate(zip(leaves, ref_leaves, strict=True)):
        if isinstance(x, torch.Tensor) and isinstance(r, torch.Tensor) and x.shape != r.shape:
            path = _flat.paths(ref)[i]
            raise ValueError(f"{where}: {name}[{path!r}] must have the shape of {ref_name}[{path!r}], "
                             f"[{', '.join(map(str, r.shape))}]; got {describe(x)}")


def check_count(where: str, count: Any) -> None:
    if not isinstance(count, torch.Tensor) or count.dtype != torch.int64 or count.ndim != 0:
        raise TypeError(f"{where}: state.count must be a 0-d int64 tensor (from init); got {describe(count)}")

"""Pytree utilities over ``torch.utils._pytree`` (reached through :mod:`deepfn._torch`).

A tree is any nesting of ``dict``, ``list``, ``tuple``, ``NamedTuple`` (and registered
dataclasses such as ``TrainState``) with tensor leaves. Every function here is pure and
traces under ``torch.compile`` and ``torch.func.vmap``.

Examples:
    >>> import torch, deepfn
    >>> t = {"a": torch.ones(2), "b": {"c": torch.zeros(3)}}
    >>> deepfn.tree.size(t)
    5
    >>> sorted(deepfn.tree.flatten(t))
    ['a', 'b.c']
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .._torch import foreach as _foreach
from .._torch import foreach_usable as _foreach_usable
from .._torch import pytree
from ..typing import PyTree
from . import flat as _flat

__all__ = [
    "map", "leaves", "structure", "unflatten_leaves", "size", "zeros_like", "ones_like", "cast",
    "global_norm", "stack", "unstack", "flatten", "unflatten", "all_equal", "register_dataclass",
]


def map(fn: Callable[..., Any], tree: PyTree, *rest: PyTree) -> PyTree:  # noqa: A001
    """Apply ``fn`` leaf-wise over one or more trees of the same structure.

    Raises:
        ValueError: the trees' structures differ (both are shown).
    """
    # The dict fast path, each tree flattened once: under torch.compile Dynamo traces every
    # flatten node by node, and a TreeSpec per node is what costs it most.
    columns, spec = _flat.flatten_alike("deepfn.tree.map", tree, *rest)
    return _flat.unflatten(spec, [fn(*xs) for xs in zip(*columns, strict=True)])


def leaves(tree: PyTree) -> list[Any]:
    """The leaves in a fixed (insertion) order."""
    return _flat.flatten(tree)[0]


def structure(tree: PyTree) -> pytree.TreeSpec:
    """The tree's structure (a ``TreeSpec``) without its leaves."""
    return pytree.tree_structure(tree)


def unflatten_leaves(spec: pytree.TreeSpec, values: Sequence[Any]) -> PyTree:
    """Inverse of ``leaves`` given ``structure(tree)``."""
    return pytree.tree_unflatten(list(values), spec)


def size(tree: PyTree) -> int:
    """Total number of elements over all tensor leaves."""
    return sum(x.numel() for x in leaves(tree) if isinstance(x, torch.Tensor))


def zeros_like(tree: PyTree) -> PyTree:
    return map(torch.zeros_like, tree)


def ones_like(tree: PyTree) -> PyTree:
    return map(torch.ones_like, tree)


def cast(tree: PyTree, dtype: torch.dtype) -> PyTree:
    """Cast floating-point leaves to ``dtype``; integer, bool and non-tensor leaves are kept.

    Raises:
        TypeError: ``dtype`` is not a floating ``torch.dtype`` (casting weights to integers
            would silently truncate them).
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"deepfn.tree.cast: dtype must be floating (it casts the floating leaves); got {dtype!r}")

    def one(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != dtype:
            return x.to(dtype)
        return x
    return map(one, tree)


def global_norm(tree: PyTree) -> torch.Tensor:
    """L2 norm over all floating leaves, ``sqrt(sum ||leaf||^2)``, as a 0-d tensor.

    Like ``torch.nn.utils.clip_grad_norm_``: the norm of the per-leaf norms, each computed in
    its own dtype, and the result in the first leaf's dtype. Eagerly one ``_foreach_norm``
    kernel; per leaf under ``torch.compile`` (Inductor fuses it) and under ``torch.func``
    transforms (``_foreach_norm`` has no vmap batching rule).
    """
    xs = [x for x in leaves(tree) if isinstance(x, torch.Tensor) and x.is_floating_point()]
    if not xs:
        raise ValueError("deepfn.tree.global_norm: the tree has no floating-point leaves")
    if _foreach_usable(xs):
        norms = _foreach("norm", xs, 2.0)
    else:
        norms = [torch.linalg.vector_norm(x, 2.0) for x in xs]
    return torch.linalg.vector_norm(torch.stack([n.to(xs[0].dtype) for n in norms]), 2.0)


def stack(trees: Sequence[PyTree]) -> PyTree:
    """Stack trees of the same structure along a new leading axis (ensembles, vmap)."""
    if len(trees) == 0:
        raise ValueError("deepfn.tree.stack: needs at least one tree; got an empty sequence")
    first = pytree.tree_structure(trees[0])
    for i, t in enumerate(trees[1:], 1):
        if pytree.tree_structure(t) != first:
            raise ValueError(f"deepfn.tree.stack: tree {i} must have the structure of tree 0;\n"
                             f"  tree 0: {first}\n  tree {i}: {pytree.tree_structure(t)}")

    columns = [leaves(t) for t in trees]
    for j, path in enumerate(_flat.paths(trees[0])):
        shapes = [list(c[j].shape) if isinstance(c[j], torch.Tensor) else type(c[j]).__name__ for c in columns]
        if any(s != shapes[0] for s in shapes):
            raise ValueError(f"deepfn.tree.stack: leaf {path!r} must have one shape in every tree; got {shapes}")
    return map(lambda *xs: torch.stack(xs), trees[0], *trees[1:])


def unstack(tree: PyTree) -> list[PyTree]:
    """Inverse of ``stack``: split every leaf along its leading axis."""
    flat, spec = pytree.tree_flatten(tree)
    if not flat:
        return []
    n = flat[0].shape[0]
    for x in flat:
        if x.ndim == 0 or x.shape[0] != n:
            raise ValueError(f"deepfn.tree.unstack: every leaf needs leading size {n}; got shape {list(x.shape)}")
    return [pytree.tree_unflatten([x[i] for x in flat], spec) for i in range(n)]


def flatten(tree: PyTree, sep: str = ".") -> dict[str, Any]:
    """Nested dicts to one flat dict with joined keys, ``{"a": {"b": x}} -> {"a.b": x}``.

    Lists and tuples use their indices as keys. Empty sub-dicts vanish (they hold no leaf).
    """
    if not isinstance(sep, str) or not sep:
        raise ValueError(f"deepfn.tree.flatten: sep must be a non-empty str; got {sep!r}")
    out: dict[str, Any] = {}

    # The root's prefix is None, not "": an empty-string key must still add a path segment,
    # else {"": {"b": x}} would flatten to "b" and collide with a sibling "b".
    def walk(prefix: str | None, node: Any) -> None:
        if isinstance(node, dict):
            items = node.items()
        elif isinstance(node, (list, tuple)):
            items = ((str(i), v) for i, v in enumerate(node))
        else:
            out["" if prefix is None else prefix] = node     # a bare leaf flattens to {"": leaf}
            return
        for k, v in items:
            if not isinstance(k, str):
                raise TypeError(f"deepfn.tree.flatten: keys must be str; got {type(k).__name__} {k!r}")
            if sep in k:
                raise ValueError(f"deepfn.tree.flatten: key {k!r} contains the separator {sep!r}")
            walk(k if prefix is None else f"{prefix}{sep}{k}", v)

    walk(None, tree)
    return out


def unflatten(flat: dict[str, Any], sep: str = ".") -> dict[str, Any]:
    """Inverse of ``flatten`` for dict trees: ``{"a.b": x} -> {"a": {"b": x}}``."""
    if not isinstance(sep, str) or not sep:
        raise ValueError(f"deepfn.tree.unflatten: sep must be a non-empty str; got {sep!r}")
    out: dict[str, Any] = {}
    for name, value in flat.items():
        if not isinstance(name, str):
            raise TypeError(f"deepfn.tree.unflatten: keys must be str; got {type(name).__name__} {name!r}")
        parts = name.split(sep)
        node = out
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ValueError(f"deepfn.tree.unflatten: {name!r} nests under the leaf {p!r}")
            node = child
        if parts[-1] in node:
            raise ValueError(f"deepfn.tree.unflatten: {name!r} collides with another key")
        node[parts[-1]] = value
    return out


def all_equal(a: PyTree, b: PyTree) -> bool:
    """Same structure and bit-identical leaves (tensors compared with ``torch.equal``)."""
    if structure(a) != structure(b):
        return False
    for x, y in zip(leaves(a), leaves(b), strict=True):
        if isinstance(x, torch.Tensor):
            if not (isinstance(y, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape
                    and torch.equal(x, y)):
                return False
        elif x != y and not (isinstance(x, float) and math.isnan(x) and math.isnan(y)):
            return False
    return True


def register_dataclass(cls: type) -> type:
    """Register a dataclass as a pytree node: every ``dataclasses.fields`` entry is a child.

    Deriving the children from the fields means no field can be forgotten (the jmp lesson).
    Unflatten bypasses ``__init__``: pytree utilities (``vmap``'s ``in_dims``/``out_dims``
    trees) rebuild nodes around placeholders such as ``0`` that a validating ``__init__``
    would reject. Fields holding ``None`` are kept in the node's context, not as leaves,
    because ``vmap`` refuses ``None`` leaves.
    """
    import dataclasses

    names = [f.name for f in dataclasses.fields(cls)]

    def flatten_fn(obj: Any) -> tuple[list[Any], tuple[str, ...]]:
        present = tuple(n for n in names if getattr(obj, n) is not None)
        return [getattr(obj, n) for n in present], present

    def unflatten_fn(children: Sequence[Any], present: tuple[str, ...]) -> Any:
        obj = object.__new__(cls)
        values = dict(builtins.zip(present, children, strict=True))
        for n in names:
            object.__setattr__(obj, n, values.get(n))
        return obj

    def flatten_with_keys_fn(obj: Any) -> tuple[list[tuple[Any, Any]], tuple[str, ...]]:
        children, present = flatten_fn(obj)
        return [(pytree.GetAttrKey(n), c) for n, c in builtins.zip(present, children, strict=True)], present

    pytree.register_pytree_node(
        cls, flatten_fn, unflatten_fn,
        serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
        flatten_with_keys_fn=flatten_with_keys_fn,
    )
    return cls

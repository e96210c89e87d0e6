"""Flatten trees fast for the usual nesting of ``dict``s of tensors (``deepfn.tree.map`` and
the optimizers).

``torch.utils._pytree`` spends its time per node in Python; an optimizer update over a
100-leaf model flattens and rebuilds a dozen trees, which cost more than the arithmetic
(figures in the documentation's benchmarks page). Under ``torch.compile`` the gap is wider:
Dynamo models each ``TreeSpec`` it builds as a new Python object and traces it. Plain
``dict`` nodes and tensor leaves are walked here directly, in plain loops (generators cost
Dynamo more); anything else (lists, tuples, NamedTuples, registered classes) is opened one
level at a time with the flatten function
``torch.utils._pytree`` registered for its type (through :mod:`deepfn._torch`), so the leaves
and their order are always ``torch.utils._pytree``'s. A spec is a nested tuple: comparing two
is a C-level tuple comparison.
"""

from __future__ import annotations

from typing import Any

import torch

from .._torch import open_node, pytree, rebuild_node

__all__ = ["flatten", "flatten_alike", "unflatten", "paths"]

Spec = Any


def flatten(tree: Any) -> tuple[list[Any], Spec]:
    leaves: list[Any] = []
    return leaves, _walk(tree, leaves)


def _walk(node: Any, out: list[Any]) -> Spec:
    if isinstance(node, torch.Tensor):
        out.append(node)
        return None
    if type(node) is dict:
        values = list(node.values())
        for v in values:
            if not isinstance(v, torch.Tensor):
                break
        else:
            # A dict of tensors (the usual innermost node) in one step: a Python call per
            # leaf is most of a flatten's time.
            out.extend(values)
            return ("leaves", tuple(node))
        subs = []
        for v in values:
            subs.append(_walk(v, out))
        for sub in subs:
            if sub is not None:
                return ("dict", tuple(node), tuple(subs))
        return ("leaves", tuple(node))   # non-tensor leaves only (a mask's bools): a tensor dict's spec
    # Any other node one level at a time through torch's registry (lists, tuples, NamedTuples,
    # registered dataclasses): the same children in the same order as torch.utils._pytree,
    # without a TreeSpec object per node.
    opened = open_node(node)
    if opened is None:   # a leaf that is not a tensor (a Python number, a mask's bool)
        out.append(node)
        return None
    children, node_type, context = opened
    subs = []
    for child in children:
        subs.append(_walk(child, out))
    return ("node", node_type, context, tuple(subs))


def flatten_alike(where: str, tree: Any, *rest: Any) -> tuple[list[list[Any]], Spec]:
    """Each tree's leaves (one list per tree) and their common spec; every tree is flattened once.

    Raises:
        ValueError: a tree's structure differs from the first one's (both are shown).
    """
    flat, spec = flatten(tree)
    columns = [flat]
    for i, other in enumerate(rest):
        other_flat, other_spec = flatten(other)
        if other_spec != spec:
            raise ValueError(
                f"{where}: tree {i + 1} has a different structure from tree 0:\n"
                f"  tree 0: {pytree.tree_structure(tree)}\n  tree {i + 1}: {pytree.tree_structure(other)}"
            )
        columns.append(other_flat)
    return columns, spec


def unflatten(spec: Spec, leaves: list[Any]) -> Any:
    it = iter(leaves)
    return _build(spec, it)


def _build(spec: Spec, it: Any) -> Any:
    if spec is None:
        return next(it)
    if spec[0] == "leaves":
        node = {}
        for k in spec[1]:   # a loop, not dict(zip(...)): Dynamo traces that through a polyfill, ~1.5 ms a node
            node[k] = next(it)
        return node
    if spec[0] == "dict":
        node = {}
        for k, sub in zip(spec[1], spec[2], strict=True):
            node[k] = _build(sub, it)
        return node
    children = []
    for sub in spec[3]:
        children.append(_build(sub, it))
    return rebuild_node(spec[1], spec[2], children)


def paths(tree: Any, prefix: str = "") -> list[str]:
    """Dotted leaf names in leaf order (``{"a": {"b": x}} -> ["a.b"]``; list items by index)."""
    if isinstance(tree, torch.Tensor):
        return [prefix]
    if type(tree) is dict:
        return [p for k, v in tree.items() for p in paths(v, f"{prefix}.{k}" if prefix else str(k))]
    flat, _ = pytree.tree_flatten_with_path(tree)
    names = []
    for keypath, _leaf in flat:
        parts = [str(next((getattr(k, a) for a in ("key", "idx", "name") if hasattr(k, a)), k)) for k in keypath]
        names.append(".".join([prefix, *parts] if prefix else parts))
    return names

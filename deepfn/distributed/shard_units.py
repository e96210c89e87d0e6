"""The units ZeRO-3 gathers one at a time, and the parameter tree a model reads them through.

:func:`plan_units` cuts a parameter tree of plain ``dict`` nodes into units: starting at the
root, a node that holds dicts and more than ``1 / UNITS`` of the parameters' bytes is opened,
its dict children planned the same way and its own tensors (if any) made one unit together;
any other node is one unit (a dict of tensors, a layer, is never cut). A ``MLP``'s ``network.<i>`` layers, a ``GPT``'s ``layers.<i>`` and its
embeddings come out as units (FSDP's wrapping of each block, chosen by size).

:class:`LazyParams` is that tree as the model sees it: a ``dict`` whose items are gathered when
read (``params["layers"]["3"]`` gathers layer 3 and returns a plain dict of whole tensors). The
gatherer keeps no strong reference, so the whole tensors live only while the model's code
and autograd hold them. It is a registered pytree node: code that flattens it (``tree.map``,
``deepfn.remat``'s arguments) gathers every unit under it and gets plain dicts back.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .._torch import pytree
from ..typing import Tensor

__all__ = ["UNITS", "Plan", "plan_units", "LazyParams"]

#: A node holding more than this fraction of the bytes is cut into its children.
UNITS = 8


@dataclass(frozen=True)
class _Unit:
    """A whole subtree gathered at once: ``template`` holds leaf positions in the unit."""
    uid: int
    template: Any


@dataclass(frozen=True)
class _Own:
    """The ``pos``-th tensor of a unit made of an opened node's own tensors."""
    uid: int
    pos: int


@dataclass(frozen=True)
class Plan:
    """``units[u]``: the flat indices (``deepfn.tree.leaves`` order) of unit ``u``'s leaves;
    ``root``: the tree of :class:`_Unit` / :class:`_Own` markers :class:`LazyParams` reads."""
    units: tuple[tuple[int, ...], ...]
    root: dict


def plan_units(params: Any, units: int = UNITS) -> Plan | None:
    """The units of ``params`` (see the module docstring), or None when it is not a tree of
    plain dicts with tensor leaves (the caller then gathers everything at once)."""
    sizes: dict[int, int] = {}
    total = _bytes(params, sizes)
    if total is None or not isinstance(params, dict) or not params:
        return None
    limit = total / units
    found: list[tuple[int, ...]] = []
    counter = itertools.count()   # flat leaf indices, in deepfn.tree.leaves order

    def open_node(node: dict) -> dict:
        out: dict = {}
        own = [k for k, v in node.items() if isinstance(v, torch.Tensor)]
        own_uid = len(found)
        if own:
            found.append(())
        own_leaves: list[int] = []
        for k, v in node.items():
            if isinstance(v, torch.Tensor):
                out[k] = _Own(own_uid, len(own_leaves))
                own_leaves.append(next(counter))
            elif sizes[id(v)] > limit and any(type(c) is dict for c in v.values()):
                out[k] = open_node(v)
            else:
                uid = len(found)
                found.append(())
                indices: list[int] = []
                out[k] = _Unit(uid, _template(v, counter, indices))
                found[uid] = tuple(indices)
        if own:
            found[own_uid] = tuple(own_leaves)
        return out

    root = open_node(params)
    return Plan(tuple(found), root)


def _bytes(node: Any, sizes: dict[int, int]) -> int | None:
    if isinstance(node, torch.Tensor):
        return node.numel() * node.element_size()
    if type(node) is not dict:
        return None
    total = 0
    for v in node.values():
        b = _bytes(v, sizes)
        if b is None:
            return None
        total += b
    sizes[id(node)] = total
    return total


def _template(node: Any, counter: Iterator[int], indices: list[int]) -> Any:
    """``node`` with each tensor replaced by its position in the unit; ``indices`` gets the
    tensors' flat indices, in flatten order."""
    if isinstance(node, torch.Tensor):
        indices.append(next(counter))
        return len(indices) - 1
    return {k: _template(v, counter, indices) for k, v in node.items()}


def _fill(template: Any, wholes: list[Tensor]) -> Any:
    if isinstance(template, int):
        return wholes[template]
    return {k: _fill(v, wholes) for k, v in template.items()}


class LazyParams(dict):
    """A parameter tree whose units are gathered when read (see the module docstring).

    ``gather(uid)`` returns unit ``uid``'s whole tensors in its leaf order. Reading an item
    calls it every time; ``keys``, ``len`` and ``in`` gather nothing.
    """

    def __init__(self, node: dict, gather: Callable[[int], list[Tensor]]):
        super().__init__(node)
        self._gather = gather

    def __getitem__(self, key: Any) -> Any:
        v = dict.__getitem__(self, key)
        if isinstance(v, _Unit):
            return _fill(v.template, self._gather(v.uid))
        if isinstance(v, _Own):
            return self._gather(v.uid)[v.pos]
        return LazyParams(v, self._gather)

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default

    def values(self) -> Any:   # type: ignore[override]
        return [self[k] for k in self]

    def items(self) -> Any:    # type: ignore[override]
        return [(k, self[k]) for k in self]

    def __repr__(self) -> str:
        return f"LazyParams({list(self)})"


def _flatten(lazy: LazyParams) -> tuple[list[Any], list[Any]]:
    keys = list(lazy)
    return [lazy[k] for k in keys], keys


def _unflatten(children: Any, keys: Any) -> dict:
    return dict(zip(keys, children, strict=True))


def _flatten_with_keys(lazy: LazyParams) -> tuple[list[tuple[Any, Any]], list[Any]]:
    children, keys = _flatten(lazy)
    return [(pytree.MappingKey(k), c) for k, c in zip(keys, children, strict=True)], keys


# A function that walks the tree (deepfn.remat's flatten of its arguments, tree.map) gathers
# every unit under the node and sees plain dicts: correct gradients, less saving. Without this
# the tree would be one opaque leaf, and remat would recompute a block whose parameters it
# cannot differentiate.
pytree.register_pytree_node(LazyParams, _flatten, _unflatten,
                            serialized_type_name=f"{LazyParams.__module__}.LazyParams",
                            flatten_with_keys_fn=_flatten_with_keys)

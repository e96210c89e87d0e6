"""``torch.utils._pytree``: torch 2.14 has no public pytree module, so deepfn uses the private
one through here (``pytree``, its public-looking functions: ``tree_flatten``, ``tree_map``,
``tree_flatten_with_path``, ``keystr``, ``register_pytree_node``, ...), and opens one node at
a time for :mod:`deepfn.tree.flat` through :func:`open_node` / :func:`rebuild_node`.

The one-node hook reads the registry itself (``_get_node_type``, ``SUPPORTED_NODES``): no
``TreeSpec`` object is built, which is what makes deepfn's flatten cheap to trace. Its fallback
flattens one level with the module's ``tree_flatten(node, is_leaf=...)``: the same children in
the same order.
"""

from __future__ import annotations

from typing import Any

import torch.utils._pytree as pytree

from .gate import hook_on, turn_off

__all__ = ["pytree", "open_node", "rebuild_node"]


def open_node(node: Any) -> tuple[list[Any], Any, Any] | None:
    """One level of a registered pytree node: ``(children, node_type, context)``, or None for a
    leaf. ``node_type`` is None when the public fallback opened it (``context`` is then a
    ``TreeSpec``); pass both back to :func:`rebuild_node` unchanged."""
    if hook_on("pytree_nodes"):
        try:
            node_type_of, nodes = _registry()
            node_type = node_type_of(node)
            node_def = nodes.get(node_type)
            if node_def is None:
                return None
            children, context = node_def.flatten_fn(node)
            return list(children), node_type, context
        except Exception as error:   # the registry's layout changed: the public flatten from now on
            turn_off("pytree_nodes", error)
    children, spec = pytree.tree_flatten(node, is_leaf=lambda x: x is not node)
    if spec.is_leaf():
        return None
    return children, None, spec


def _registry() -> tuple[Any, Any]:
    """The registry's lookup of a node's type and its table of node definitions."""
    return pytree._get_node_type, pytree.SUPPORTED_NODES


def rebuild_node(node_type: Any, context: Any, children: list[Any]) -> Any:
    """The node that :func:`open_node` opened, from its (possibly new) children."""
    if node_type is None:
        return pytree.tree_unflatten(children, context)
    return pytree.SUPPORTED_NODES[node_type].unflatten_fn(children, context)

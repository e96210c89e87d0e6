"""Which params a half-precision policy keeps in float32: the rule and the cast that applies it.

``torch.autocast`` never casts a module's parameters: a batch or layer norm under autocast
normalises half inputs with its float32 weight and bias (the kernels' mixed mode), and jmp
users give normalisation modules a float32 policy. :class:`~deepfn.amp.Policy` does the same
through a rule over the nodes of the params tree, ``keep_float32(path, node) -> bool``; the
default, :func:`norm_affine`, recognises a normalisation layer's affine by its structure, not
by its name: a node of exactly a ``weight`` and a ``bias`` of the same shape (``BatchNorm``,
``LayerNorm``; a ``Dense`` or ``Conv2d`` weight has more axes than its bias).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from .. import tree
from ..typing import PyTree

__all__ = ["HALF", "KeepFloat32", "cast_keeping_float32", "norm_affine"]

#: The dtypes a ``keep_float32`` rule protects params from (float32 and float64 need no rule).
HALF = (torch.float16, torch.bfloat16)

#: ``keep_float32(path, node) -> bool``: ``path`` is the node's dotted path in the params tree
#: (``""`` for the root, ``"layer1.0.bn1"``), ``node`` the dict at that path.
KeepFloat32 = Callable[[str, Mapping[str, Any]], bool]


def norm_affine(path: str, node: Mapping[str, Any]) -> bool:
    """True for the params of a normalisation layer: exactly ``weight`` and ``bias``, tensors
    of one shape (an elementwise affine). ``path`` is not read.

    Examples:
        >>> import torch
        >>> norm_affine("norm", {"weight": torch.ones(4), "bias": torch.zeros(4)})
        True
        >>> norm_affine("fc", {"weight": torch.ones(4, 4), "bias": torch.zeros(4)})
        False
    """
    if set(node) != {"weight", "bias"}:
        return False
    weight, bias = node["weight"], node["bias"]
    return (isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor)
            and weight.shape == bias.shape)


def cast_keeping_float32(x: PyTree, dtype: torch.dtype, keep_float32: KeepFloat32 | None) -> PyTree:
    """Floating leaves of ``x`` to ``dtype``, except under dict nodes ``keep_float32`` picks,
    whose floating leaves go to float32, when ``dtype`` is a half dtype. Integer and bool
    leaves are left alone. With ``keep_float32=None`` or a float32/float64 ``dtype`` this is
    ``tree.cast(x, dtype)``."""
    if keep_float32 is None or dtype not in HALF:
        return tree.cast(x, dtype)
    return _walk(x, "", dtype, keep_float32)


def _walk(node: Any, path: str, dtype: torch.dtype, keep: KeepFloat32) -> Any:
    if isinstance(node, Mapping):
        picked = keep(path, node)
        if not isinstance(picked, bool):   # a truthy dict or str would silently keep float32
            raise TypeError(f"amp.Policy: keep_float32 must return a bool; got {type(picked).__name__} "
                            f"for path {path!r}")
        if picked:
            return tree.cast(dict(node), torch.float32)
        return {k: _walk(v, f"{path}.{k}" if path else str(k), dtype, keep) for k, v in node.items()}
    if type(node) in (list, tuple):
        return type(node)(_walk(v, f"{path}.{i}" if path else str(i), dtype, keep) for i, v in enumerate(node))
    return tree.cast(node, dtype)

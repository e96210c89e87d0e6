"""Message helpers shared by the checks: tree comparison that names the worst element, and
the wrapper that turns an exception inside a check into that check's ``AssertionError``.

Every message starts with the check's name, then the block or function checked, then the
property, the largest difference and where it was found, e.g.::

    deterministic: Noisy.apply: two identical calls gave different outputs; largest difference 0.25 at output[1, 0] (bit-identical required)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from .._torch import pytree

T = TypeVar("T")

HINTS = {
    "compile": (
        "under torch.compile(fullgraph=True) any graph break is an error; the usual causes are "
        ".item()/.tolist()/bool(tensor), Python control flow on tensor values (use torch.where), "
        "print or calls into non-PyTorch code, and global RNG ops such as torch.rand (take a "
        "deepfn.random key instead)"
    ),
    "vmap": (
        "torch.func.vmap refuses .item() and Python control flow on tensor values, in-place writes "
        "of batched values into tensors made inside apply (z = torch.zeros(...); z[0] = x: use "
        "torch.where, torch.cat or x.new_zeros), and global RNG ops such as torch.rand (take a "
        "deepfn.random key instead)"
    ),
}
DEFAULT_HINT = (
    "a call that succeeded once failed when repeated; the usual causes are in-place updates of "
    "inputs, params or state, Python state kept between calls, and global RNG ops"
)


def owner_name(obj: Any, method: str | None = None) -> str:
    """``"Dense(in_features=3, ...).apply"`` for a dataclass block, ``"Foo.apply"`` for another
    object, the qualified name for a function."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        text = repr(obj)
        text = text if len(text) <= 160 else f"{type(obj).__name__}(...)"
    elif callable(obj) and hasattr(obj, "__qualname__"):
        return obj.__qualname__
    else:
        text = type(obj).__name__
    return f"{text}.{method}" if method else text


def _index(flat: torch.Tensor, shape: torch.Size) -> str:
    if len(shape) == 0:
        return ""
    idx = torch.unravel_index(flat, shape)
    return "[" + ", ".join(str(int(i)) for i in idx) + "]"


def _differences(actual: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """``|actual - expected|`` in float64; equal values (inf == inf) and NaN pairs count as 0,
    a NaN against a number as inf."""
    a, e = actual.detach(), expected.detach()
    if not (a.is_floating_point() or a.is_complex()):
        a, e = a.to(torch.int64), e.to(torch.int64)
        return (a - e).abs().to(torch.float64)
    wide = torch.complex128 if (a.is_complex() or e.is_complex()) else torch.float64
    a, e = a.to(wide), e.to(wide)
    same = (a == e) | (torch.isnan(a) & torch.isnan(e))
    diff = (a - e).abs()
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
    return torch.where(same, torch.zeros_like(diff), diff)


def compare_trees(check: str, owner: str, claim: str, actual: Any, expected: Any, *,
                  label: str, rtol: float, atol: float) -> None:
    """Raise ``AssertionError`` unless ``actual`` and ``expected`` have one structure and close
    tensor leaves (``|a - e| <= atol + rtol * |e|``); ``rtol = atol = 0`` asks for bit equality.

    The message names the leaf (``label`` + its path) and index of the largest difference.
    """
    tol = "bit-identical required" if rtol == 0 and atol == 0 else f"rtol={rtol:g}, atol={atol:g}"
    fa, sa = pytree.tree_flatten_with_path(actual)
    fe, se = pytree.tree_flatten_with_path(expected)
    if sa != se:
        raise AssertionError(
            f"{check}: {owner}: {claim}; largest difference inf: the structures differ\n"
            f"  got:      {sa}\n  expected: {se}"
        )
    worst: tuple[float, str] | None = None
    for (path, a), (_, e) in zip(fa, fe, strict=True):
        where = f"{label}{pytree.keystr(path)}"
        if not isinstance(a, torch.Tensor) or not isinstance(e, torch.Tensor):
            if isinstance(a, torch.Tensor) or isinstance(e, torch.Tensor) or a != e:
                raise AssertionError(f"{check}: {owner}: {claim}; largest difference inf at {where}: "
                                     f"got {a!r}, expected {e!r}")
            continue
        if a.shape != e.shape or a.dtype != e.dtype:
            raise AssertionError(
                f"{check}: {owner}: {claim}; largest difference inf at {where}: got "
                f"{str(a.dtype).removeprefix('torch.')} {list(a.shape)}, expected "
                f"{str(e.dtype).removeprefix('torch.')} {list(e.shape)}"
            )
        if a.numel() == 0:
            continue
        diff = _differences(a, e)
        bound = atol + rtol * e.detach().abs().to(torch.float64) if e.is_floating_point() else atol
        if not bool((diff > bound).any()):
            continue
        flat = diff.reshape(-1).argmax()
        value = float(diff.reshape(-1)[flat])
        if worst is None or value > worst[0]:
            worst = (value, f"{where}{_index(flat, a.shape)}")
    if worst is not None:
        raise AssertionError(f"{check}: {owner}: {claim}; largest difference {worst[0]:.4g} at {worst[1]} ({tol})")


def guarded(check: str, owner: str, doing: str, fn: Callable[[], T]) -> T:
    """Run ``fn``; an exception becomes ``check``'s ``AssertionError`` chained to it, with a hint."""
    try:
        return fn()
    except Exception as err:
        text = str(err).strip().splitlines()
        first = text[0] if text else ""
        first = first if len(first) <= 300 else first[:297] + "..."
        raise AssertionError(
            f"{check}: {owner}: {doing} raised {type(err).__name__}: {first}\n"
            f"  hint: {HINTS.get(check, DEFAULT_HINT)}"
        ) from err

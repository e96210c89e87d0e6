"""Static input checks with one message form.

Every check reads metadata only (``.shape``, ``.ndim``, ``.dtype``), so it costs nothing
under ``torch.compile`` and never calls ``.item()``. Messages read::

    Dense(in_features=4, out_features=2, bias=True).apply: x must have size 4 (in_features) in axis -1; got float32 [3, 5]
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

import torch


def where(owner: Any, method: str = "apply") -> str:
    """``"Dense(...).apply"``: the prefix naming the block (or function) that rejected input."""
    if isinstance(owner, str):
        return owner
    return f"{_repr(owner)}.{method}"


def _repr(x: Any) -> str:
    """``repr(x)``, but for dataclasses with a generated ``__repr__`` built here without its
    recursion guard, which calls ``_thread.get_ident``: Dynamo cannot trace that builtin and
    warns whenever a compiled step formats an error message naming its block."""
    if type(x) in (list, tuple):
        inner = ", ".join(_repr(v) for v in x)
        return f"[{inner}]" if isinstance(x, list) else f"({inner}{',' if len(x) == 1 else ''})"
    generated = getattr(type(x).__repr__, "__wrapped__", None) is not None
    if dataclasses.is_dataclass(x) and not isinstance(x, type) and generated:
        fields = ", ".join(f"{f.name}={_repr(getattr(x, f.name))}" for f in dataclasses.fields(x) if f.repr)
        return f"{type(x).__qualname__}({fields})"
    return repr(x)


_MAX_REPR = 80


def describe(x: Any) -> str:
    """``"float32 [2, 3]"`` for a tensor; else the type name and a repr cut to one line.

    Containers whose repr runs long are summarized (``"tuple of 2: (dict with keys ['w'],
    dict with keys [])"``), so that a message never prints the values of tensors.
    """
    if isinstance(x, torch.Tensor):
        dtype = str(x.dtype).removeprefix("torch.")
        return f"{dtype} [{', '.join(str(s) for s in x.shape)}]"
    text = repr(x)
    if len(text) <= _MAX_REPR and "\n" not in text:
        return f"{type(x).__name__} {text}"
    return f"{type(x).__name__} {_summary(x)}"


def _summary(x: Any) -> str:
    """One line for a value whose repr is long: the structure of a container, else a cut repr."""
    if isinstance(x, (tuple, list)):
        parts = [_short(v) for v in x[:4]] + (["..."] if len(x) > 4 else [])
        return f"of {len(x)}: ({', '.join(parts)})"
    if isinstance(x, Mapping):
        return _keys(x)
    return repr(x).replace("\n", " ")[:_MAX_REPR - 3] + "..."


def _short(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return describe(x)
    if isinstance(x, Mapping):
        return f"{type(x).__name__} {_keys(x)}"
    return type(x).__name__


def _keys(x: Mapping) -> str:
    keys = [repr(k) for k in list(x)[:8]] + (["..."] if len(x) > 8 else [])
    return f"with keys [{', '.join(keys)}]"


def check_tensor(owner: Any, name: str, x: Any, method: str = "apply") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where(owner, method)}: {name} must be a torch.Tensor; got {describe(x)}")


def check_rank(owner: Any, name: str, x: Any, ranks: int | Iterable[int], *,
               layout: str | None = None, method: str = "apply") -> None:
    """Raise ``ValueError`` unless ``x.ndim`` is one of ``ranks``; ``layout`` names the axes."""
    check_tensor(owner, name, x, method)
    allowed = (ranks,) if isinstance(ranks, int) else tuple(ranks)
    if x.ndim not in allowed:
        want = " or ".join(f"{r}-d" for r in allowed)
        extra = f" {layout}" if layout else ""
        raise ValueError(f"{where(owner, method)}: {name} must be {want}{extra}; got {describe(x)}")


def check_dim(owner: Any, name: str, x: Any, *, axis: int, size: int, hyper: str | None = None,
              method: str = "apply") -> None:
    """Raise ``ValueError`` unless ``x.shape[axis] == size``; ``hyper`` names the field behind it."""
    check_tensor(owner, name, x, method)
    if x.ndim == 0 or not (-x.ndim <= axis < x.ndim) or x.shape[axis] != size:
        why = f" ({hyper})" if hyper else ""
        raise ValueError(
            f"{where(owner, method)}: {name} must have size {size}{why} in axis {axis}; got {describe(x)}"
        )


def check_floating(owner: Any, name: str, x: Any, method: str = "apply") -> None:
    """Raise ``TypeError`` unless ``x`` has a floating dtype."""
    check_tensor(owner, name, x, method)
    if not x.is_floating_point():
        raise TypeError(f"{where(owner, method)}: {name} must be floating point; got {describe(x)}")


def check_integer(owner: Any, name: str, x: Any, method: str = "apply") -> None:
    """Raise ``TypeError`` unless ``x`` has an integer (not bool) dtype."""
    check_tensor(owner, name, x, method)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{where(owner, method)}: {name} must be an integer tensor (int64 ids); got {describe(x)}")


def check_same_dtype(owner: Any, name: str, x: torch.Tensor, dtype: torch.dtype,
                     reference: str, method: str = "apply") -> None:
    if x.dtype != dtype:
        want = str(dtype).removeprefix("torch.")
        raise TypeError(f"{where(owner, method)}: {name} must have dtype {want} like {reference}; got {describe(x)}")


def check_positive(owner: Any, **fields: Any) -> None:
    """Config check for ``__post_init__``: every field a positive ``int``."""
    for name, value in fields.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{type(owner).__name__}: {name} must be a positive int; got {value!r}")


def check_probability(owner: Any, name: str, value: Any) -> None:
    """Config check: a rate in ``[0, 1)``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{type(owner).__name__}: {name} must be a float in [0, 1); got {value!r}")


def check_choice(owner: Any, name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"{type(owner).__name__}: {name} must be one of {list(choices)}; got {value!r}")


def require_key(owner: Any, key: Any, why: str = "dropout") -> None:
    """``train=True`` with randomness needs a key: say so, and say how to fix it."""
    if key is None:
        raise ValueError(
            f"{where(owner)}: train=True needs a random key for {why}; pass key=deepfn.random.key(seed) "
            "(split a fresh one per step), or call with train=False"
        )
    if not isinstance(key, torch.Tensor) or key.dtype != torch.int64 or key.shape[-1:] != (2,):
        raise TypeError(f"{where(owner)}: key must be an int64 tensor [2] from deepfn.random.key; got {describe(key)}")


#: The expected layout of a params (or state) tree: a shape per leaf, a nested dict per child.
Layout = Mapping[str, Union[tuple[int, ...], "Layout"]]


def check_params(owner: Any, params: Any, expected: Layout, *, like: torch.Tensor | None = None,
                 dtype: bool = True, name: str = "params", method: str = "apply") -> None:
    """Raise unless ``params`` has exactly ``expected``'s keys and leaf shapes (and fits ``like``).

    Reads metadata only (key sets, ``.shape``, ``.dtype``, ``.device``), so under
    ``torch.compile`` it is decided while tracing and leaves nothing in the graph. A block
    given another block's params (another width, a missing ``bias``) fails here, before
    any computation could broadcast its way to a result of the wrong shape.

    Args:
        owner: the block (named in the message).
        params: the tree the block got: a ``dict`` of tensors and nested dicts.
        expected: a shape tuple per leaf name, a nested layout per child.
        like: the input; every leaf must lie on its device and, when ``dtype`` is true,
            have its dtype (outside ``torch.autocast``, which casts per op).
        name: how the message calls the tree (``"params"`` or ``"state"``).

    Raises:
        ValueError: a missing or unexpected key, or a leaf of another shape.
        TypeError: a node that is not a dict, a leaf that is not a tensor, or a dtype
            other than ``like``'s.
    """
    if not isinstance(params, dict):
        pair = isinstance(params, tuple) and len(params) == 2 and isinstance(params[0], dict)
        hint = f" (init returns a (params, state) pair: pass its first item as {name})" if pair else ""
        raise TypeError(f"{where(owner, method)}: {name} must be a dict with keys {list(expected)} "
                        f"(from {type(owner).__name__}.init); got {describe(params)}{hint}")
    if params.keys() != expected.keys():
        _raise_keys(owner, params, expected, name, method)
    for key, want in expected.items():
        p = params[key]
        if isinstance(want, dict):
            check_params(owner, p, want, like=like, dtype=dtype, name=f"{name}[{key!r}]", method=method)
        elif not isinstance(p, torch.Tensor):
            raise TypeError(f"{where(owner, method)}: {name}[{key!r}] must be a tensor of shape "
                            f"{_shape(want)}; got {describe(p)}")
        elif p.shape != want:
            raise ValueError(f"{where(owner, method)}: {name}[{key!r}] must be {_shape(want)}; got {describe(p)}")
        elif like is not None:
            _check_like(owner, f"{name}[{key!r}]", p, like, dtype, method)


def check_keys(owner: Any, params: Any, keys: Iterable[str], *, name: str = "params",
               method: str = "apply") -> None:
    """A composite's cheap top-level check: ``params`` is a dict with exactly ``keys``
    (its children's own checks cover the leaves)."""
    keys = tuple(keys)
    if not isinstance(params, dict):
        raise TypeError(f"{where(owner, method)}: {name} must be a dict with keys {list(keys)} "
                        f"(from {type(owner).__name__}.init); got {describe(params)}")
    if params.keys() != set(keys):
        _raise_keys(owner, params, dict.fromkeys(keys), name, method)


def _check_like(owner: Any, name: str, p: torch.Tensor, like: torch.Tensor, dtype: bool, method: str) -> None:
    if p.device != like.device:
        raise ValueError(f"{where(owner, method)}: {name} must be on the input's device {like.device}; "
                         f"got {describe(p)} on {p.device}")
    if dtype and p.dtype != like.dtype and not torch.is_autocast_enabled(like.device.type):
        raise TypeError(f"{where(owner, method)}: {name} must have the input's dtype "
                        f"{str(like.dtype).removeprefix('torch.')} (cast with deepfn.tree.cast or an "
                        f"amp.Policy); got {describe(p)}")


def _raise_keys(owner: Any, params: dict, expected: Mapping[str, Any], name: str, method: str) -> None:
    missing = [k for k in expected if k not in params]
    extra = [k for k in params if k not in expected]
    parts = []
    if missing:
        parts.append(f"is missing {', '.join(repr(k) for k in missing)}")
    if extra:
        parts.append(f"has unexpected {', '.join(repr(k) for k in extra)}")
    raise ValueError(f"{where(owner, method)}: {name} {' and '.join(parts)}; expected keys {list(expected)} "
                     f"(from {type(owner).__name__}.init), got {list(params)}")


def _shape(shape: tuple[int, ...]) -> str:
    return f"[{', '.join(str(s) for s in shape)}]"


def takes_positional(fn: Any, n: int) -> bool:
    """Whether ``fn`` can be called with ``n`` positional arguments; True when its signature
    cannot be read (some builtins), so only a callable that surely cannot is rejected."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    try:
        signature.bind(*([None] * n))
    except TypeError:
        return False
    return True

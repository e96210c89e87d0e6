"""A pytree as JSON plus named tensors, and back, rebuilding only allowed types.

:func:`encode` turns a tree into a JSON-able spec whose tensor leaves are replaced by names
into a flat ``{name: tensor}`` dict (one safetensors entry each). :func:`decode` rebuilds the
tree from the spec; NamedTuple and dataclass nodes come from the allow-list in
:mod:`.registry`, never from importing the name stored in the file. :func:`decode_like` takes
every container from a template instead, and compares the file with it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .errors import DamagedCheckpointError
from .registry import is_namedtuple_class, registered_type, type_name

__all__ = ["encode", "decode", "decode_like"]

_LEAF_VALUES = (bool, int, str)


def _join(path: str, key: object) -> str:
    return f"{path}/{key}" if path else str(key)


def encode(node: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """The JSON spec of ``node``; its tensors are added to ``tensors`` under their paths.

    Raises:
        TypeError: a leaf or dict key that cannot be stored (its path is named).
    """
    if isinstance(node, torch.Tensor):
        name = path or "tensor"
        while name in tensors:            # keys holding "/" could collide; keep both
            name += "~"
        tensors[name] = node
        return {"t": "tensor", "name": name}
    if node is None or isinstance(node, _LEAF_VALUES):
        return {"t": "value", "v": node}
    if isinstance(node, float):
        return {"t": "float", "v": node.hex()}  # exact, and inf/nan survive JSON
    if isinstance(node, dict):
        bad = [k for k in node if not isinstance(k, str)]
        if bad:
            raise TypeError(f"deepfn.checkpoint.save: dict keys must be str; got {bad[0]!r} at {path or '<root>'}")
        return {"t": "dict", "items": [[k, encode(v, _join(path, k), tensors)] for k, v in node.items()]}
    if is_namedtuple_class(type(node)):
        return {"t": "namedtuple", "type": type_name(type(node)), "fields": list(node._fields),
                "items": [encode(v, _join(path, f), tensors) for f, v in zip(node._fields, node, strict=True)]}
    if isinstance(node, (list, tuple)):
        return {"t": type(node).__name__, "items": [encode(v, _join(path, i), tensors) for i, v in enumerate(node)]}
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        names = [f.name for f in dataclasses.fields(node)]
        return {"t": "dataclass", "type": type_name(type(node)),
                "fields": {n: encode(getattr(node, n), _join(path, n), tensors) for n in names}}
    raise TypeError(f"deepfn.checkpoint.save: cannot store a {type(node).__name__} at {path or '<root>'}; "
                    "leaves must be tensors, None, bool, int, float or str")


class _Spec:
    """Reads one file's spec: every malformed node is damage, named by file and tree path."""

    def __init__(self, source: str, tensors: dict[str, torch.Tensor]) -> None:
        self.source, self.tensors = source, tensors

    def damaged(self, path: str, what: str) -> DamagedCheckpointError:
        return DamagedCheckpointError(f"deepfn.checkpoint.load: {self.source!r} is damaged: its tree "
                                      f"at {path or '<root>'} {what}")

    def field(self, node: dict, key: str, kind: type | tuple[type, ...], path: str) -> Any:
        value = node.get(key)
        if not isinstance(value, kind):
            raise self.damaged(path, f"lacks a valid {key!r} entry")
        return value

    def kind(self, node: Any, path: str) -> str:
        if not isinstance(node, dict) or not isinstance(node.get("t"), str):
            raise self.damaged(path, "is not a node")
        if node["t"] not in ("tensor", "value", "float", "dict", "list", "tuple", "namedtuple", "dataclass"):
            raise self.damaged(path, f"has the unknown node kind {node['t']!r}")
        return node["t"]

    def tensor(self, node: dict, path: str) -> torch.Tensor:
        name = self.field(node, "name", str, path)
        if name not in self.tensors:
            raise self.damaged(path, f"names the tensor {name!r}, which is not in the file")
        return self.tensors[name]

    def leaf(self, node: dict, kind: str, path: str) -> Any:
        if kind == "float":
            try:
                return float.fromhex(self.field(node, "v", str, path))
            except (ValueError, OverflowError):
                raise self.damaged(path, f"holds the malformed float {node['v']!r}") from None
        value = node.get("v")
        if value is not None and (not isinstance(value, _LEAF_VALUES)):
            raise self.damaged(path, f"holds a {type(value).__name__} value")
        return value

    def dict_items(self, node: dict, path: str) -> dict[str, Any]:
        items = self.field(node, "items", list, path)
        if not all(isinstance(i, list) and len(i) == 2 and isinstance(i[0], str) for i in items):
            raise self.damaged(path, "holds a dict item that is not a [str, node] pair")
        return dict(items)

    def named_fields(self, node: dict, kind: str, path: str) -> tuple[str, dict[str, Any]]:
        """The stored type name and ``{field: node}`` of a namedtuple or dataclass node."""
        name = self.field(node, "type", str, path)
        if kind == "dataclass":
            fields = self.field(node, "fields", dict, path)
            return name, fields
        fields, items = self.field(node, "fields", list, path), self.field(node, "items", list, path)
        if len(fields) != len(items) or not all(isinstance(f, str) for f in fields):
            raise self.damaged(path, "holds namedtuple fields and items that do not pair up")
        return name, dict(zip(fields, items, strict=True))

    def allowed(self, name: str, kind: str, path: str) -> type:
        cls = registered_type(name)
        if cls is None:
            raise ValueError(f"deepfn.checkpoint.load: {self.source!r} names the type {name!r} at "
                             f"{path or '<root>'}, which is not registered; call "
                             "deepfn.checkpoint.register(cls) for your own types (loading never "
                             "imports a name read from a file), or pass like=")
        if (kind == "namedtuple") != is_namedtuple_class(cls):
            raise ValueError(f"deepfn.checkpoint.load: {self.source!r} stores {name!r} at {path or '<root>'} "
                             f"as a {kind}, but the registered class is not one")
        return cls


def decode(spec: Any, tensors: dict[str, torch.Tensor], source: str) -> Any:
    """Rebuild the tree of ``spec`` from the allow-list; ``source`` names the file in errors.

    Raises:
        DamagedCheckpointError: the spec is malformed or names a tensor the file lacks.
        ValueError: it names a type that is not registered, or fields the registered class lacks.
    """
    return _decode(_Spec(source, tensors), spec, "")


def _decode(spec: _Spec, node: Any, path: str) -> Any:
    kind = spec.kind(node, path)
    if kind == "tensor":
        return spec.tensor(node, path)
    if kind in ("value", "float"):
        return spec.leaf(node, kind, path)
    if kind == "dict":
        return {k: _decode(spec, v, _join(path, k)) for k, v in spec.dict_items(node, path).items()}
    if kind in ("list", "tuple"):
        items = [_decode(spec, v, _join(path, i)) for i, v in enumerate(spec.field(node, "items", list, path))]
        return items if kind == "list" else tuple(items)
    name, fields = spec.named_fields(node, kind, path)
    cls = spec.allowed(name, kind, path)
    expected = list(cls._fields) if kind == "namedtuple" else [f.name for f in dataclasses.fields(cls)]
    if sorted(fields) != sorted(expected):
        raise ValueError(f"deepfn.checkpoint.load: {spec.source!r} stores {name!r} at {path or '<root>'} "
                         f"with the fields {sorted(fields)}; the registered class has {sorted(expected)} "
                         "(saved by another version of it?)")
    values = {f: _decode(spec, v, _join(path, f)) for f, v in fields.items()}
    return cls(**values)


def _describe(node: dict) -> str:
    kind = node["t"]
    if kind in ("namedtuple", "dataclass"):
        return f"a {kind} {node.get('type')!r}"
    if kind == "value" and node.get("v") is None:
        return "None"
    return {"value": "a value", "float": "a value"}.get(kind, f"a {kind}")


def _describe_like(like: Any) -> str:
    if isinstance(like, torch.Tensor):
        return "a tensor"
    if like is None:
        return "None"
    if isinstance(like, (*_LEAF_VALUES, float)):
        return "a value"
    if is_namedtuple_class(type(like)) or dataclasses.is_dataclass(like):
        kind = "namedtuple" if is_namedtuple_class(type(like)) else "dataclass"
        return f"a {kind} {type_name(type(like))!r}"
    return f"a {type(like).__name__}"


def decode_like(spec: Any, tensors: dict[str, torch.Tensor], like: Any, source: str) -> Any:
    """Rebuild the tree with ``like``'s containers, the file's tensors and leaf values.

    Raises:
        DamagedCheckpointError: the spec is malformed.
        ValueError: the file differs from ``like`` (first the first path that differs, in tree
            order; missing, unexpected, reshaped, retyped leaves and other containers).
        TypeError: ``like`` holds something a checkpoint cannot (its path is named).
    """
    problems: list[str] = []
    tree = _decode_like(_Spec(source, tensors), spec, like, "", problems)
    if problems:
        more = f"; and {len(problems) - 8} more" if len(problems) > 8 else ""
        raise ValueError(f"deepfn.checkpoint.load: {source!r} does not match `like` (another model or "
                         "config?): " + "; ".join(problems[:8]) + more)
    return tree


def _decode_like(spec: _Spec, node: Any, like: Any, path: str, problems: list[str]) -> Any:
    kind, where = spec.kind(node, path), path or "<root>"
    before = len(problems)
    if isinstance(like, torch.Tensor):
        if kind != "tensor":
            problems.append(f"{where}: {_describe(node)} in the file, a tensor in like")
            return None
        got = spec.tensor(node, path)
        if tuple(got.shape) != tuple(like.shape):
            problems.append(f"{where}: shape {list(got.shape)} in the file, {list(like.shape)} in like")
        if got.dtype != like.dtype:
            problems.append(f"{where}: dtype {got.dtype} in the file, {like.dtype} in like")
        return got
    if like is None or isinstance(like, (*_LEAF_VALUES, float)):
        if kind not in ("value", "float"):   # leaf values (a step, a name) may differ between runs
            problems.append(f"{where}: {_describe(node)} in the file, {_describe_like(like)} in like")
            return None
        return spec.leaf(node, kind, path)
    if isinstance(like, dict):
        bad = [k for k in like if not isinstance(k, str)]
        if bad:
            raise TypeError(f"deepfn.checkpoint.load: like's dict keys must be str; got {bad[0]!r} at {where}")
        if kind != "dict":
            problems.append(f"{where}: {_describe(node)} in the file, a dict in like")
            return None
        return _match_fields(spec, spec.dict_items(node, path), like, path, problems)
    if is_namedtuple_class(type(like)) or (dataclasses.is_dataclass(like) and not isinstance(like, type)):
        want = "namedtuple" if is_namedtuple_class(type(like)) else "dataclass"
        if kind != want or node.get("type") != type_name(type(like)):
            problems.append(f"{where}: {_describe(node)} in the file, {_describe_like(like)} in like")
            return None
        _, fields = spec.named_fields(node, kind, path)
        names = like._fields if want == "namedtuple" else [f.name for f in dataclasses.fields(like)]
        values = _match_fields(spec, fields, {n: getattr(like, n) for n in names}, path, problems)
        return type(like)(**values) if len(problems) == before else None
    if isinstance(like, (list, tuple)):
        if kind != type(like).__name__:
            problems.append(f"{where}: {_describe(node)} in the file, {_describe_like(like)} in like")
            return None
        items = spec.field(node, "items", list, path)
        if len(items) != len(like):
            problems.append(f"{where}: {len(items)} items in the file, {len(like)} in like")
            return None
        values = [_decode_like(spec, n, t, _join(path, i), problems) for i, (n, t) in enumerate(zip(items, like, strict=True))]
        return values if isinstance(like, list) else tuple(values)
    raise TypeError(f"deepfn.checkpoint.load: like holds a {type(like).__name__} at {where}; a checkpoint "
                    "holds tensors, None, bool, int, float, str, dicts, lists, tuples, NamedTuples and dataclasses")


def _match_fields(spec: _Spec, nodes: dict[str, Any], like: dict[str, Any], path: str,
                  problems: list[str]) -> dict[str, Any]:
    # In like's order, so that the first problem is the first path that differs; a run of
    # missing keys is one problem, keys only the file has come last.
    out, missing = {}, []
    for k, v in like.items():
        if k not in nodes:
            missing.append(_join(path, k))
            continue
        if missing:
            problems.append(f"missing {_listed(missing)}")
            missing = []
        out[k] = _decode_like(spec, nodes[k], v, _join(path, k), problems)
    if missing:
        problems.append(f"missing {_listed(missing)}")
    unexpected = [_join(path, k) for k in nodes if k not in like]
    if unexpected:
        problems.append(f"unexpected {_listed(unexpected)}")
    return out


def _listed(names: list[str], limit: int = 8) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return "[" + ", ".join(names[:limit]) + "]" + more

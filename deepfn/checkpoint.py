"""Atomic safetensors checkpoints of whole pytrees, and a manager that keeps the last k
and the best.

Each tensor leaf is one safetensors entry (its own dtype and shape) named by its path; the
containers (dicts, lists, tuples, NamedTuples, dataclasses such as ``TrainState`` and
``DynamicLossScale``, ``None``, Python scalars and strings) are recorded as JSON in the
file's metadata, so :func:`load` rebuilds the same tree. Twin: ``torch.save`` of a
``state_dict`` (without pickle: loading runs no code) / ``safetensors.torch.save_file``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections import namedtuple
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ._atomic import write_atomically
from .typing import PyTree

__all__ = ["save", "load", "load_metadata", "CheckpointManager"]

_TREE, _META, _FORMAT = "deepfn.tree", "deepfn.metadata", "deepfn.format"


def _type_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _import_type(name: str) -> type | None:
    module, _, qualname = name.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return obj


def _encode(node: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, torch.Tensor):
        name = path or "tensor"
        while name in tensors:            # keys holding "/" could collide; keep both
            name += "~"
        tensors[name] = node
        return {"t": "tensor", "name": name}
    if node is None or isinstance(node, (bool, int, str)):
        return {"t": "value", "v": node}
    if isinstance(node, float):
        return {"t": "float", "v": node.hex()}  # exact, and inf/nan survive JSON
    if isinstance(node, dict):
        bad = [k for k in node if not isinstance(k, str)]
        if bad:
            raise TypeError(f"deepfn.checkpoint.save: dict keys must be str; got {bad[0]!r} at {path or '<root>'}")
        return {"t": "dict", "items": [[k, _encode(v, f"{path}/{k}" if path else k, tensors)] for k, v in node.items()]}
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return {"t": "namedtuple", "type": _type_name(type(node)), "fields": list(node._fields),
                "items": [_encode(v, f"{path}/{f}" if path else f, tensors) for f, v in zip(node._fields, node, strict=True)]}
    if isinstance(node, (list, tuple)):
        return {"t": type(node).__name__,
                "items": [_encode(v, f"{path}/{i}" if path else str(i), tensors) for i, v in enumerate(node)]}
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        names = [f.name for f in dataclasses.fields(node)]
        return {"t": "dataclass", "type": _type_name(type(node)),
                "fields": {n: _encode(getattr(node, n), f"{path}/{n}" if path else n, tensors) for n in names}}
    raise TypeError(f"deepfn.checkpoint.save: cannot store a {type(node).__name__} at {path or '<root>'}; "
                    "leaves must be tensors, None, bool, int, float or str")


def _decode(node: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
    kind = node["t"]
    if kind == "tensor":
        return tensors[node["name"]]
    if kind == "value":
        return node["v"]
    if kind == "float":
        return float.fromhex(node["v"])
    if kind == "dict":
        return {k: _decode(v, tensors) for k, v in node["items"]}
    if kind in ("list", "tuple"):
        items = [_decode(v, tensors) for v in node["items"]]
        return items if kind == "list" else tuple(items)
    if kind == "namedtuple":
        cls = _import_type(node["type"])
        if cls is None:   # the class is gone: an equivalent namedtuple keeps the fields
            cls = namedtuple(node["type"].rpartition(".")[2].rpartition(":")[2], node["fields"])
        return cls(*[_decode(v, tensors) for v in node["items"]])
    if kind == "dataclass":
        cls = _import_type(node["type"])
        if cls is None:
            raise ValueError(f"deepfn.checkpoint.load: cannot import {node['type']} to rebuild the tree")
        return cls(**{n: _decode(v, tensors) for n, v in node["fields"].items()})
    raise ValueError(f"deepfn.checkpoint.load: unknown node kind {kind!r}")


def _storable(t: torch.Tensor, seen: set[int]) -> torch.Tensor:
    t = t.detach().cpu()
    # safetensors refuses views, strided tensors and shared storage: give those their own copy.
    whole = t.untyped_storage().nbytes() == t.numel() * t.element_size() and t.storage_offset() == 0
    shared = t.untyped_storage().data_ptr() in seen and t.numel() > 0
    if not t.is_contiguous() or not whole or shared:
        t = t.clone(memory_format=torch.contiguous_format)
    seen.add(t.untyped_storage().data_ptr())
    return t


def _versions() -> dict[str, str]:
    import safetensors

    from . import __version__
    return {"deepfn": __version__, "torch": torch.__version__, "safetensors": safetensors.__version__}


def save(path: str | os.PathLike, tree: PyTree, metadata: dict[str, Any] | None = None) -> None:
    """Write ``tree`` to ``path`` in safetensors format, atomically.

    The bytes go to a temporary file in the same directory, are flushed and fsynced, and
    then renamed over ``path`` (``os.replace``): a crash leaves the previous file intact.

    Args:
        path: the file to write (conventionally ``*.safetensors``).
        tree: a pytree (see the module docstring for what it may hold).
        metadata: JSON-serialisable dict (step, config, metrics) for :func:`load_metadata`;
            library versions are added under ``"versions"`` unless given.

    Raises:
        TypeError: a leaf or dict key that cannot be stored (the path is named).
    """
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"deepfn.checkpoint.save: metadata must be a dict or None; got {type(metadata).__name__}")
    raw: dict[str, torch.Tensor] = {}
    spec = _encode(tree, "", raw)
    seen: set[int] = set()
    tensors = {k: _storable(v, seen) for k, v in raw.items()}
    meta = {"versions": _versions(), **(metadata or {})}
    try:
        header = {_TREE: json.dumps(spec), _META: json.dumps(meta), _FORMAT: "1"}
    except TypeError as err:
        raise TypeError(f"deepfn.checkpoint.save: metadata must be JSON-serialisable; {err}") from None
    blob = st_save(tensors, metadata=header)
    write_atomically(path, blob)


def _header(path: str | os.PathLike) -> dict[str, str]:
    with safe_open(os.fspath(path), framework="pt") as f:
        header = f.metadata() or {}
    if _TREE not in header:
        raise ValueError(f"deepfn.checkpoint.load: {os.fspath(path)!r} is a safetensors file without a "
                         "deepfn tree; it was not written by deepfn.checkpoint.save")
    return header


def load(path: str | os.PathLike, device: str | torch.device = "cpu", *, like: PyTree = None) -> PyTree:
    """Read the tree written by :func:`save`: same containers, bit-identical tensors on ``device``.

    Args:
        path: a file written by :func:`save`.
        device: where the tensors go.
        like: optional template (e.g. ``TrainState.create(model, ...)`` of the model about to
            be trained); the file must hold the same tensor paths with the same shapes and
            dtypes and the same containers, else nothing is returned.

    Raises:
        ValueError: the file was not written by :func:`save`, or it does not match ``like``
            (every missing, unexpected, reshaped or retyped leaf is named by its path).
    """
    header = _header(path)
    spec = json.loads(header[_TREE])
    with open(os.fspath(path), "rb") as f:
        tensors = st_load(f.read())
    if like is not None:
        _check_like(os.fspath(path), spec, tensors, like)
    if torch.device(device).type != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return _decode(spec, tensors)


def _skeleton(node: Any) -> Any:
    # The containers only: leaf values (a step count, a name) may differ between runs.
    if isinstance(node, dict):
        if node.get("t") in ("value", "float", "tensor"):
            return node["t"] == "tensor"
        return {k: _skeleton(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_skeleton(v) for v in node]
    return node


def _check_like(path: str, spec: dict, tensors: dict[str, torch.Tensor], like: PyTree) -> None:
    expected: dict[str, torch.Tensor] = {}
    like_spec = _encode(like, "", expected)
    problems = []
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing:
        problems.append(f"missing {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected {_listed(unexpected)}")
    for name in (k for k in expected if k in tensors):
        got, want = tensors[name], expected[name]
        if tuple(got.shape) != tuple(want.shape):
            problems.append(f"{name}: shape {list(got.shape)} in the file, {list(want.shape)} in like")
        if got.dtype != want.dtype:
            problems.append(f"{name}: dtype {got.dtype} in the file, {want.dtype} in like")
    if not problems and _skeleton(spec) != _skeleton(like_spec):
        problems.append("the same tensors in different containers (dict/list/tuple/dataclass types)")
    if problems:
        more = f"; and {len(problems) - 8} more" if len(problems) > 8 else ""
        raise ValueError(f"deepfn.checkpoint.load: {path!r} does not match `like` (another model or "
                         f"config?): " + "; ".join(problems[:8]) + more)


def _listed(names: list[str], limit: int = 8) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return "[" + ", ".join(names[:limit]) + "]" + more


def load_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``metadata`` given to :func:`save` (plus ``"versions"``), without reading tensors."""
    return json.loads(_header(path)[_META])


class CheckpointManager:
    """Numbered checkpoints in ``directory``: keeps the last ``keep_last`` and the best.

    ``save(step, tree, metrics=None, metadata=None)`` writes ``ckpt_<step>.safetensors``
    atomically (see :func:`save`), records ``metrics`` in its metadata, then deletes files that
    are neither among the last ``keep_last`` steps nor (``keep_best``) the best by
    ``metrics[monitor]`` (``mode`` ``"min"`` or ``"max"``), and temporary files left by a
    process killed mid-save. The manager holds no state besides its configuration: it reads
    the directory, so it resumes across processes (one writing process per directory).

    Example:
        >>> import tempfile, torch
        >>> m = CheckpointManager(tempfile.mkdtemp(), keep_last=2)
        >>> _ = m.save(0, {"w": torch.ones(2)}, metrics={"val_loss": 1.0})
        >>> m.latest_step(), m.restore()["w"].tolist()
        (0, [1.0, 1.0])
    """

    def __init__(self, directory: str | os.PathLike, keep_last: int = 3, keep_best: bool = True,
                 monitor: str = "val_loss", mode: str = "min", prefix: str = "ckpt") -> None:
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(f"CheckpointManager: keep_last must be a positive int; got {keep_last!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"CheckpointManager: mode must be one of ['min', 'max']; got {mode!r}")
        self.directory, self.keep_last, self.keep_best = os.fspath(directory), keep_last, keep_best
        self.monitor, self.mode, self.prefix = monitor, mode, prefix
        os.makedirs(self.directory, exist_ok=True)

    def path(self, step: int) -> str:
        return os.path.join(self.directory, f"{self.prefix}_{step:09d}.safetensors")

    def steps(self) -> list[int]:
        """Steps with a complete checkpoint, ascending (temporary files are ignored)."""
        head, tail = f"{self.prefix}_", ".safetensors"
        found = []
        for name in os.listdir(self.directory):
            middle = name[len(head):-len(tail)]
            if name.startswith(head) and name.endswith(tail) and middle.isdigit():
                found.append(int(middle))
        return sorted(found)

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """The step whose ``metrics[monitor]`` is best; ``None`` when no checkpoint has it."""
        scored = []
        for s in self.steps():
            value = load_metadata(self.path(s)).get("metrics", {}).get(self.monitor)
            if isinstance(value, (int, float)) and value == value:
                scored.append((value if self.mode == "min" else -value, s))
        return min(scored)[1] if scored else None

    def save(self, step: int, tree: PyTree, metrics: dict[str, float] | None = None,
             metadata: dict[str, Any] | None = None) -> str:
        """Write checkpoint ``step``, prune old ones, return its path."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"CheckpointManager.save: step must be a non-negative int; got {step!r}")
        metrics = {k: float(v) for k, v in (metrics or {}).items()}
        path = self.path(step)
        save(path, tree, {**(metadata or {}), "step": step, "metrics": metrics})
        steps = self.steps()
        keep = set(steps[-self.keep_last:])
        if self.keep_best:
            best = self.best_step()
            if best is not None:
                keep.add(best)
        for s in steps:
            if s not in keep:
                os.remove(self.path(s))
        self._remove_stale_temporaries()
        return path

    def _remove_stale_temporaries(self) -> None:
        # A process killed mid-save leaves its ".<name>.<random>.tmp" (never a checkpoint:
        # steps() ignores it); once this save has completed, such files are garbage.
        for name in os.listdir(self.directory):
            if name.startswith(f".{self.prefix}_") and name.endswith(".tmp"):
                try:
                    os.remove(os.path.join(self.directory, name))
                except FileNotFoundError:
                    pass

    def restore(self, step: int | None = None, device: str | torch.device = "cpu", *,
                like: PyTree = None) -> PyTree:
        """Load checkpoint ``step`` (default: the latest), checked against ``like`` (see :func:`load`)."""
        return load(self._existing(step), device, like=like)

    def metadata(self, step: int | None = None) -> dict[str, Any]:
        return load_metadata(self._existing(step))

    def _existing(self, step: int | None) -> str:
        step = self.latest_step() if step is None else step
        if step is None or not os.path.exists(self.path(step)):
            raise FileNotFoundError(f"CheckpointManager: no checkpoint for step {step} in "
                                    f"{self.directory!r}; available: {self.steps()}")
        return self.path(step)

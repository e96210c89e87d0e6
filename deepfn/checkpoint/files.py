"""One checkpoint file: :func:`save`, :func:`load` and :func:`load_metadata`.

The file is safetensors: each tensor leaf is one entry named by its path, and the header's
metadata holds the tree's containers as JSON (``deepfn.tree``), the user's metadata
(``deepfn.metadata``) and the format (``deepfn.format``). From format 2 on it also holds the
SHA-256 of each tensor's bytes (``deepfn.digests``), each tensor's dtype and shape
(``deepfn.tensors``) and a SHA-256 over these five entries (``deepfn.header_digest``), so a
changed byte anywhere in the file is caught when it is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .._atomic import write_atomically
from ..typing import PyTree
from .errors import DamagedCheckpointError
from .tree_codec import decode, decode_like, encode

__all__ = ["save", "load", "load_metadata"]

_TREE, _META, _FORMAT, _DIGESTS = "deepfn.tree", "deepfn.metadata", "deepfn.format", "deepfn.digests"
_TABLE, _HEADER_DIGEST = "deepfn.tensors", "deepfn.header_digest"
_DIGESTED = (_FORMAT, _TREE, _META, _DIGESTS, _TABLE)     # what the header digest covers
_FORMAT_NOW, _FORMATS_READ = "2", ("1", "2")
_MAX_HEADER = 100_000_000   # safetensors' own limit on the JSON header


def _storable(t: torch.Tensor, seen: set[int]) -> torch.Tensor:
    t = t.detach().cpu()
    # safetensors refuses views, strided tensors and shared storage: give those their own copy.
    whole = t.untyped_storage().nbytes() == t.numel() * t.element_size() and t.storage_offset() == 0
    shared = t.untyped_storage().data_ptr() in seen and t.numel() > 0
    if not t.is_contiguous() or not whole or shared:
        t = t.clone(memory_format=torch.contiguous_format)
    seen.add(t.untyped_storage().data_ptr())
    return t


def _digest(t: torch.Tensor) -> str:
    # The tensor's bytes as safetensors stores them (contiguous, little-endian), without a copy.
    return hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy()).hexdigest()


def _table_entry(t: torch.Tensor) -> list[Any]:
    return [str(t.dtype).removeprefix("torch."), list(t.shape)]


def _header_digest(meta: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps([meta[k] for k in _DIGESTED]).encode()).hexdigest()


def _versions() -> dict[str, str]:
    import safetensors

    from .. import __version__
    return {"deepfn": __version__, "torch": torch.__version__, "safetensors": safetensors.__version__}


def save(path: str | os.PathLike, tree: PyTree, metadata: dict[str, Any] | None = None) -> None:
    """Write ``tree`` to ``path`` in safetensors format, atomically, with a digest per tensor.

    The bytes go to a temporary file in the same directory, are flushed and fsynced, and
    then renamed over ``path`` (``os.replace``): a crash leaves the previous file intact.
    The file's permissions follow the process umask, as ``open()``'s do.

    Args:
        path: the file to write (conventionally ``*.safetensors``).
        tree: a pytree of tensors, ``None``, bool, int, float and str leaves in dicts (str
            keys), lists, tuples, NamedTuples and dataclasses.
        metadata: JSON-serialisable dict (step, config, metrics) for :func:`load_metadata`;
            library versions are added under ``"versions"`` unless given.

    Raises:
        TypeError: a leaf or dict key that cannot be stored (the path is named), or metadata
            that is not a JSON-serialisable dict.
    """
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"deepfn.checkpoint.save: metadata must be a dict or None; got {type(metadata).__name__}")
    raw: dict[str, torch.Tensor] = {}
    spec = encode(tree, "", raw)
    seen: set[int] = set()
    tensors = {k: _storable(v, seen) for k, v in raw.items()}
    meta = {"versions": _versions(), **(metadata or {})}
    try:
        header = {_TREE: json.dumps(spec), _META: json.dumps(meta), _FORMAT: _FORMAT_NOW,
                  _DIGESTS: json.dumps({k: _digest(v) for k, v in tensors.items()}),
                  _TABLE: json.dumps({k: _table_entry(v) for k, v in tensors.items()})}
    except (TypeError, ValueError) as err:
        raise TypeError(f"deepfn.checkpoint.save: metadata must be JSON-serialisable; {err}") from None
    header[_HEADER_DIGEST] = _header_digest(header)
    write_atomically(path, st_save(tensors, metadata=header))


def _damaged(who: str, source: str, what: str) -> DamagedCheckpointError:
    return DamagedCheckpointError(f"{who}: {source!r} is damaged: {what}")


def _parse_header(data: bytes, size: int, who: str, source: str) -> dict[str, str]:
    """The safetensors header's metadata, once the header is readable and the file is whole.

    ``data`` holds at least the 8-byte length and the JSON header; ``size`` is the file's size.
    """
    if size < 8:
        raise _damaged(who, source, f"it is {size} bytes long, too short for a safetensors file")
    n = int.from_bytes(data[:8], "little")
    if n > _MAX_HEADER or 8 + n > size:
        raise _damaged(who, source, f"its header claims {n} bytes but the file has {size} "
                                    "(truncated, or not a safetensors file)")
    try:
        header = json.loads(data[8:8 + n])
    except (ValueError, RecursionError):
        header = None
    if not isinstance(header, dict):
        raise _damaged(who, source, "its safetensors header is not a JSON object (not a safetensors file?)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _damaged(who, source, "its safetensors metadata is not a str-to-str map")
    try:
        end = max((int(e["data_offsets"][1]) for e in header.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise _damaged(who, source, "its safetensors header lacks valid data offsets") from None
    if 8 + n + end != size:
        raise _damaged(who, source, f"its header describes {8 + n + end} bytes but the file has {size} "
                                    "(truncated or extended)")
    return meta


def _read_header(source: str, who: str) -> dict[str, str]:
    with open(source, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        n = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
        if len(prefix) == 8 and n <= _MAX_HEADER:
            prefix += f.read(n)
    return _parse_header(prefix, size, who, source)


def _deepfn_format(meta: dict[str, str], who: str, source: str) -> str:
    """The file's format, once its deepfn header entries are whole (format 2: digest checked)."""
    if _TREE not in meta:
        raise _damaged(who, source, "it is a safetensors file without a deepfn tree; it was not written "
                                    "by deepfn.checkpoint.save")
    fmt = meta.get(_FORMAT)
    if fmt is None:
        raise _damaged(who, source, f"its header lacks {[_FORMAT]}")
    if fmt not in _FORMATS_READ:
        raise ValueError(f"{who}: {source!r} has the checkpoint format {fmt!r}; this deepfn reads "
                         f"{list(_FORMATS_READ)} (was it saved by a newer deepfn?)")
    if fmt != "1":
        lacking = [k for k in (*_DIGESTED, _HEADER_DIGEST) if k not in meta]
        if lacking:
            raise _damaged(who, source, f"its header lacks {lacking}")
        if _header_digest(meta) != meta[_HEADER_DIGEST]:
            raise _damaged(who, source, "its header (tree, metadata, digests or tensor table) does not "
                                        "match the SHA-256 digest saved with it")
    return fmt


def _json(meta: dict[str, str], key: str, kind: type, who: str, source: str) -> Any:
    try:
        value = json.loads(meta[key])
    except (KeyError, ValueError, RecursionError):
        value = None
    if not isinstance(value, kind):
        raise _damaged(who, source, f"its {key!r} entry is missing or not valid JSON")
    return value


def _verify(meta: dict[str, str], fmt: str, tensors: dict[str, torch.Tensor], source: str) -> None:
    who = "deepfn.checkpoint.load"
    if fmt == "1":
        warnings.warn(f"{who}: {source!r} is a format-1 checkpoint without tensor digests; its "
                      "tensors cannot be verified (save it again to add them)", stacklevel=3)
        return
    digests, table = _json(meta, _DIGESTS, dict, who, source), _json(meta, _TABLE, dict, who, source)
    for name, tensor in tensors.items():
        if name not in digests or name not in table:
            raise _damaged(who, source, f"the tensor {name!r} has no digest")
        if _table_entry(tensor) != table[name]:
            raise _damaged(who, source, f"the tensor {name!r} reads as {_table_entry(tensor)} (dtype, shape); "
                                        f"it was saved as {table[name]}")
        if _digest(tensor) != digests[name]:
            raise _damaged(who, source, f"the bytes of the tensor {name!r} do not match their SHA-256 "
                                        "digest saved with it")


def load(path: str | os.PathLike, device: str | torch.device = "cpu", *, like: PyTree = None) -> PyTree:
    """Read the tree written by :func:`save`: same containers, bit-identical tensors on ``device``.

    Loading runs no code from the file: NamedTuples and dataclasses are rebuilt only from
    deepfn's own types and those given to :func:`deepfn.checkpoint.register` (or, with
    ``like``, from the template), and each tensor is checked against its SHA-256 digest.

    Args:
        path: a file written by :func:`save`.
        device: where the tensors go.
        like: optional template (e.g. ``TrainState.create(model, ...)`` of the model about to
            be trained): the containers come from it, and the file must hold the same paths,
            with tensors of the same shapes and dtypes, else nothing is returned.

    Returns:
        The tree.

    Raises:
        DamagedCheckpointError: (a ``ValueError``) the file is truncated, not a deepfn
            checkpoint, malformed, or a tensor's bytes do not match its digest (named).
        ValueError: the file names a type that is not registered, or does not match ``like``
            (the first differing path first: missing, unexpected, reshaped, retyped leaves).
        OSError: the file cannot be opened (e.g. ``FileNotFoundError``).

    Warns:
        UserWarning: a format-1 file (saved before digests existed) cannot be verified.
    """
    source, who = os.fspath(path), "deepfn.checkpoint.load"
    with open(source, "rb") as f:
        data = f.read()
    meta = _parse_header(data, len(data), who, source)
    fmt = _deepfn_format(meta, who, source)
    spec = _json(meta, _TREE, dict, who, source)
    try:
        tensors = st_load(data)
    except SafetensorError as err:
        raise _damaged(who, source, f"safetensors cannot read it ({err})") from None
    _verify(meta, fmt, tensors, source)
    if torch.device(device).type != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    try:
        return decode(spec, tensors, source) if like is None else decode_like(spec, tensors, like, source)
    except RecursionError:
        raise _damaged(who, source, "its tree nests too deeply") from None


def load_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``metadata`` given to :func:`save` (plus ``"versions"``), reading only the header.

    Raises:
        DamagedCheckpointError: (a ``ValueError``) the file is truncated or not a deepfn checkpoint.
        OSError: the file cannot be opened.
    """
    source, who = os.fspath(path), "deepfn.checkpoint.load_metadata"
    meta = _read_header(source, who)
    _deepfn_format(meta, who, source)
    return _json(meta, _META, dict, who, source)

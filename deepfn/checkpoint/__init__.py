"""Atomic safetensors checkpoints of whole pytrees, and a manager that keeps the last k
and the best.

A checkpoint is data, never code. Each tensor leaf is one safetensors entry (its own dtype
and shape) named by its path; the containers are recorded as JSON in the file's metadata, and
:func:`load` rebuilds them without importing or calling any name read from the file. It
rebuilds:

- ``dict`` (str keys), ``list``, ``tuple``, ``None``, ``int``, ``float``, ``bool`` and ``str``;
- deepfn's own types: ``TrainState``, ``DynamicLossScale``, ``NoOpLossScale`` and the
  optimizer states (``EmptyState``, ``ScaleByAdamState``, ``TraceState``,
  ``ScaleByScheduleState``);
- the NamedTuples and dataclasses you pass to :func:`register` (it works as a decorator).

A file naming any other type raises ``ValueError`` naming it. With ``load(..., like=template)``
every container comes from the template instead (the names in the file are only compared),
so a checkpoint of another model raises ``ValueError`` naming the first path that differs.

Each tensor's bytes are stored with their SHA-256 digest (format 2), and the header (tree,
metadata, digests, each tensor's dtype and shape) with one more; both are checked on every
load: a changed byte raises :class:`DamagedCheckpointError` (a ``ValueError``) naming the file
and, in a tensor, the tensor's path, as does a truncated or malformed file. Format-1 files
(saved before digests) still load, with a warning that their tensors cannot be verified.
:meth:`CheckpointManager.restore_latest` falls back past damaged files to the newest good one.
Files follow the process umask, as ``open()``'s do.

Twin: ``torch.save`` of a ``state_dict`` with ``torch.load(weights_only=True)`` /
``safetensors.torch.save_file``.
"""

from .errors import DamagedCheckpointError as DamagedCheckpointError
from .files import load as load
from .files import load_metadata as load_metadata
from .files import save as save
from .manager import CheckpointManager as CheckpointManager
from .registry import register as register

__all__ = ["save", "load", "load_metadata", "register", "CheckpointManager", "DamagedCheckpointError"]

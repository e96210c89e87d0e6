"""The error of a checkpoint file that cannot be read as written."""

from __future__ import annotations

__all__ = ["DamagedCheckpointError"]


class DamagedCheckpointError(ValueError):
    """A checkpoint file is damaged: truncated, not safetensors, a malformed deepfn header, or
    a tensor whose bytes do not match the SHA-256 digest stored when it was saved.

    A ``ValueError``; :meth:`CheckpointManager.restore_latest` catches it to fall back to an
    older checkpoint, while a file that is whole but does not fit (another model, a type that
    is not registered) raises a plain ``ValueError``.
    """

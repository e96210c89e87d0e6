"""Numbered checkpoints in one directory: keep the last k and the best, restore the newest good one."""

from __future__ import annotations

import numbers
import os
import warnings
from typing import Any

import torch

from ..typing import PyTree
from .errors import DamagedCheckpointError
from .files import load, load_metadata, save

__all__ = ["CheckpointManager"]


class CheckpointManager:
    """Numbered checkpoints in ``directory``: keeps the last ``keep_last`` and the best.

    ``save(step, tree, metrics=None, metadata=None)`` writes ``ckpt_<step>.safetensors``
    atomically (see :func:`deepfn.checkpoint.save`), records ``metrics`` in its metadata, then
    deletes files that are neither among the last ``keep_last`` steps nor (``keep_best``) the
    best by ``metrics[monitor]`` (``mode`` ``"min"`` or ``"max"``), and temporary files left by
    a process killed mid-save. The manager holds no state besides its configuration: it reads
    the directory, so it resumes across processes (one writing process per directory).

    Examples:
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
        """The step whose ``metrics[monitor]`` is best; ``None`` when no checkpoint has it.

        A damaged file is skipped with a warning naming it.
        """
        scored = []
        for s in self.steps():
            try:
                meta = load_metadata(self.path(s))
            except DamagedCheckpointError as err:
                warnings.warn(f"CheckpointManager.best_step: skipping a damaged checkpoint: {err}", stacklevel=2)
                continue
            except FileNotFoundError:      # removed since it was listed
                continue
            metrics = meta.get("metrics")
            value = metrics.get(self.monitor) if isinstance(metrics, dict) else None
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
                scored.append((value if self.mode == "min" else -value, s))
        return min(scored)[1] if scored else None

    def save(self, step: int, tree: PyTree, metrics: dict[str, Any] | None = None,
             metadata: dict[str, Any] | None = None) -> str:
        """Write checkpoint ``step``, prune old ones, return its path.

        Args:
            step: a non-negative int, the file's number.
            tree: the pytree to save.
            metrics: ``{name: number}``; a number is an int, a float or a one-element tensor.
            metadata: more JSON-serialisable metadata (see :func:`deepfn.checkpoint.save`).

        Raises:
            ValueError: a negative or non-int ``step``, or a metric that is a tensor of more
                than one element (named).
            TypeError: ``metrics`` is not a dict, or a metric is not a number (named).
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"CheckpointManager.save: step must be a non-negative int; got {step!r}")
        metrics = _numeric_metrics(metrics)
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
        """Load checkpoint ``step`` (default: the latest), checked against ``like``.

        See :func:`deepfn.checkpoint.load` for what is rebuilt and what raises.
        """
        return load(self._existing(step), device, like=like)

    def restore_latest(self, like: PyTree = None, device: str | torch.device = "cpu") -> tuple[int, PyTree] | None:
        """The newest checkpoint that reads whole: ``(step, tree)``, or ``None`` if there is none.

        Steps are tried newest first. A damaged file (truncated, unreadable, a tensor that
        fails its digest) gives a warning naming it and the reason, and the next older one is
        tried. A whole file that does not fit ``like`` (another model or config) or names a
        type that is not registered raises at once: that is not damage, and falling back
        would hide it.

        Args:
            like: optional template (e.g. the current ``TrainState``); see
                :func:`deepfn.checkpoint.load`.
            device: where the tensors go.

        Returns:
            ``(step, tree)`` of the newest good checkpoint; ``None`` when the directory holds
            no checkpoint at all.

        Raises:
            ValueError: a checkpoint does not match ``like`` or names an unregistered type;
                or every checkpoint in the directory is damaged (each is named).
        """
        damaged = []
        for step in reversed(self.steps()):
            path = self.path(step)
            try:
                return step, load(path, device, like=like)
            except DamagedCheckpointError as err:
                warnings.warn(f"CheckpointManager.restore_latest: skipping a damaged checkpoint, "
                              f"trying the next older one: {err}", stacklevel=2)
                damaged.append(path)
            except FileNotFoundError:      # removed since it was listed
                continue
        if damaged:
            raise ValueError(f"CheckpointManager.restore_latest: every checkpoint in {self.directory!r} "
                             f"is damaged ({len(damaged)}: {damaged}); move them away to start afresh")
        return None

    def metadata(self, step: int | None = None) -> dict[str, Any]:
        """The metadata of checkpoint ``step`` (default: the latest); see :func:`load_metadata`."""
        return load_metadata(self._existing(step))

    def _existing(self, step: int | None) -> str:
        step = self.latest_step() if step is None else step
        if step is None or not os.path.exists(self.path(step)):
            raise FileNotFoundError(f"CheckpointManager: no checkpoint for step {step} in "
                                    f"{self.directory!r}; available: {self.steps()}")
        return self.path(step)


def _numeric_metrics(metrics: Any) -> dict[str, float]:
    """``metrics`` as ``{name: float}``; every non-number is named."""
    if metrics is None:
        return {}
    if not isinstance(metrics, dict):
        raise TypeError(f"CheckpointManager.save: metrics must be a dict of numbers or None; "
                        f"got {type(metrics).__name__}")
    out = {}
    for name, value in metrics.items():
        if not isinstance(name, str):
            raise TypeError(f"CheckpointManager.save: metric names must be str; got {name!r}")
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(f"CheckpointManager.save: metrics[{name!r}] must be a number; got a "
                                 f"tensor of shape {list(value.shape)} ({value.numel()} elements)")
            value = value.item()
        if not isinstance(value, numbers.Real):
            raise TypeError(f"CheckpointManager.save: metrics[{name!r}] must be a number (int, float "
                            f"or a one-element tensor); got {type(value).__name__} {value!r}"[:300])
        out[name] = float(value)
    return out

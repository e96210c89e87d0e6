"""Checkpoints of :func:`~deepfn.train.fit`: one per epoch (train state, the loop's position,
the history) and the resume from the newest good one.

A resume restores with the current train state as the template (a checkpoint of another
model raises ``ValueError`` naming the first differing path; no type named in a file is
rebuilt from the file), falls back past a damaged newest checkpoint to the newest good one
(with a warning naming it), and reads the loop's position and history from that same
checkpoint, so they always belong to the state restored.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from .. import distributed as dist
from ..checkpoint import CheckpointManager, DamagedCheckpointError
from .early_stopping import EarlyStopping
from .history import History
from .state import TrainState

__all__ = ["FitCheckpoints", "Resumed", "whole"]


def whole(train_state: TrainState) -> TrainState:
    """The full train state of a sharded one (``distributed.unshard``: a collective, so every rank
    calls it), else ``train_state`` itself.

    What validation, ``on_epoch_end`` and the checkpoints of :func:`~deepfn.train.fit` see: a
    sharded run's checkpoint is one full file, which a single process loads and a job of any
    world size resumes from.
    """
    return dist.unshard(train_state) if isinstance(train_state, dist.ShardedTrainState) else train_state


@dataclass
class Resumed:
    """What a resume restores: the train state, the best state (None: not stored), the history,
    early stopping's record, and the loop's position (``epoch``, first ``batch`` of it)."""

    train_state: TrainState
    best_state: TrainState | None
    history: History
    stopping: EarlyStopping
    epoch: int
    batch: int


class FitCheckpoints:
    """``ckpt_<step>.safetensors`` in ``directory``: the last ``keep_last`` and the best by ``monitor``."""

    def __init__(self, directory: str | os.PathLike, keep_last: int, monitor: str, mode: str) -> None:
        self.manager = CheckpointManager(directory, keep_last=keep_last, monitor=monitor, mode=mode)
        self.monitor = monitor

    def save(self, step: int, train_state: TrainState, value: float | None, history: History,
             stopping: EarlyStopping, epoch: int, batch: int, metadata: dict[str, Any] | None) -> None:
        """Write ``train_state`` (after update ``step``) with the monitored ``value``, the history and
        the loop's position: it goes on at ``epoch``, batch ``batch``."""
        loop = {"epoch": epoch, "batch": batch, "wait": stopping.wait, "best_epoch": stopping.best_epoch,
                "best_value": stopping.best_value, "stopped_early": stopping.stopped}
        self.manager.save(step, train_state, metrics={self.monitor: value},
                          metadata={**(metadata or {}), "loop": loop, "history": history.rows})

    def resume(self, like: TrainState, device: torch.device, stopping: EarlyStopping) -> Resumed | None:
        """The newest good checkpoint checked against ``like``; None when the folder holds none.

        ``stopping`` gives the settings (mode, min delta, patience, smoothing) the record is restored
        into; the smoothing window is refilled from the history's complete epochs. A sharded
        ``like`` (a collective then: every rank calls it) is checked as the full state the files
        hold, and the states restored are cut into this rank's shares again.
        """
        sharding = like.sharding if isinstance(like, dist.ShardedTrainState) else None
        like = whole(like)
        found = self.manager.restore_latest(like=like, device=device)
        if found is None:
            return None
        step, train_state = found
        best = self._best(like, device)
        if sharding is not None:
            train_state = dist.shard(train_state, sharding)
            best = None if best is None else dist.shard(best, sharding)
        meta = self.manager.metadata(step)
        loop = meta["loop"]
        history = History(meta["history"], loop["best_epoch"], loop["best_value"], loop["stopped_early"])
        restored = EarlyStopping(stopping.mode, stopping.min_delta, stopping.patience, loop["best_epoch"],
                                 loop["best_value"], loop["wait"], loop["stopped_early"], stopping.smoothing)
        restored.replay([row.get(self.monitor) for row in history.rows if not row.get("partial")])
        return Resumed(train_state, best, history, restored, loop["epoch"], loop["batch"])

    def _best(self, like: TrainState, device: torch.device) -> TrainState | None:
        best = self.manager.best_step()
        if best is None:
            return None
        try:
            return self.manager.restore(best, device, like=like)
        except DamagedCheckpointError as err:
            warnings.warn(f"deepfn.train.fit: the best checkpoint is damaged, so the best state restarts "
                          f"from the resumed one: {err}", stacklevel=3)
            return None

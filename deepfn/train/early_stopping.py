"""Early stopping and the best epoch: Keras' ``EarlyStopping`` over a history column."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["EarlyStopping", "improved"]


def improved(value: float | None, best: float | None, mode: str, min_delta: float) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` (``mode`` ``"min"`` or ``"max"``);
    a missing or NaN value never does, any value beats no best."""
    if value is None or math.isnan(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


@dataclass
class EarlyStopping:
    """Tracks the best value of a monitored metric and the epochs since it improved.

    Attributes:
        mode, min_delta, patience: ``"min"``/``"max"``, the smallest change that counts, and the
            number of complete epochs without improvement that stops training (None: never).
        best_epoch, best_value: the best so far (None before any finite value).
        wait: complete epochs since the last improvement.
        stopped: patience ran out.
    """

    mode: str = "min"
    min_delta: float = 0.0
    patience: int | None = None
    best_epoch: int | None = None
    best_value: float | None = None
    wait: int = 0
    stopped: bool = False

    def observe(self, value: float | None, epoch: int, partial: bool) -> bool:
        """Record epoch ``epoch``'s ``value``; True when it is the new best. A ``partial`` epoch
        (cut short by ``max_steps`` or a time limit) can be the best but never adds to ``wait``."""
        better = improved(value, self.best_value, self.mode, self.min_delta)
        if better:
            self.best_value, self.best_epoch, self.wait = value, epoch, 0
        elif not partial:
            self.wait += 1
        self.stopped = self.patience is not None and self.wait >= self.patience
        return better

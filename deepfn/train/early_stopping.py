"""Early stopping and the best epoch: Keras' ``EarlyStopping`` over a history column, optionally
over its trailing moving average (``smoothing``), so that one lucky epoch of a small
validation split does not pick the state that is kept."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["EarlyStopping", "improved", "smoothed"]


def improved(value: float | None, best: float | None, mode: str, min_delta: float) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` (``mode`` ``"min"`` or ``"max"``);
    a missing or NaN value never does, any value beats no best."""
    if value is None or math.isnan(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def smoothed(values: list[float | None]) -> float | None:
    """The mean of ``values`` (a window of monitored values, oldest first); None when one is
    missing, NaN when one is NaN (so a window holding a diverged epoch never improves)."""
    if not values or any(v is None for v in values):
        return None
    return math.fsum(values) / len(values)


@dataclass
class EarlyStopping:
    """Tracks the best value of a monitored metric and the epochs since it improved.

    With ``smoothing`` ``w > 1`` the value compared is the mean of the last ``w`` complete
    epochs' values (fewer in the first ``w - 1`` epochs), so an epoch is the best only when
    the epochs up to it are good together; the state kept is that epoch's (the window's last).

    Attributes:
        mode, min_delta, patience: ``"min"``/``"max"``, the smallest change that counts, and the
            number of complete epochs without improvement that stops training (None: never).
        smoothing: the window ``w >= 1`` of the trailing mean (1: the raw value).
        best_epoch, best_value: the best so far (``best_value`` is the smoothed value; None before
            any finite value).
        wait: complete epochs since the last improvement.
        stopped: patience ran out.
        recent: the raw values of the last ``w - 1`` complete epochs, oldest first.
        last_value: the value compared at the last ``observe`` (smoothed).
    """

    mode: str = "min"
    min_delta: float = 0.0
    patience: int | None = None
    best_epoch: int | None = None
    best_value: float | None = None
    wait: int = 0
    stopped: bool = False
    smoothing: int = 1
    recent: list[float | None] = field(default_factory=list)
    last_value: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.smoothing, bool) or not isinstance(self.smoothing, int) or self.smoothing < 1:
            raise ValueError(f"deepfn.train.EarlyStopping: smoothing must be a positive int (a window of "
                             f"epochs); got {self.smoothing!r}")

    def observe(self, value: float | None, epoch: int, partial: bool) -> bool:
        """Record epoch ``epoch``'s ``value``; True when it is the new best. A ``partial`` epoch
        (cut short by ``max_steps`` or a time limit) can be the best but never adds to ``wait``
        nor joins the smoothing window (its epoch is run again, whole, after a resume)."""
        window = (self.recent + [value])[-self.smoothing:]
        if not partial:
            self.recent = window[1:] if len(window) == self.smoothing else window
        self.last_value = value = smoothed(window)
        better = improved(value, self.best_value, self.mode, self.min_delta)
        if better:
            self.best_value, self.best_epoch, self.wait = value, epoch, 0
        elif not partial:
            self.wait += 1
        self.stopped = self.patience is not None and self.wait >= self.patience
        return better

    def replay(self, values: list[float | None]) -> None:
        """Refill the smoothing window from the monitored values of the complete epochs so far
        (oldest first), as a resumed run does from its history."""
        self.recent = list(values)[-(self.smoothing - 1):] if self.smoothing > 1 else []

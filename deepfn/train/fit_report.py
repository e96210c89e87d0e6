"""What :func:`~deepfn.train.fit` reports: the epoch's mean train metrics (over finite steps),
the history row, the one-line summary, the progress bar and the learning-curve plot."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from .. import distributed as dist
from .history import plot_history

__all__ = ["EpochMeans", "summary_line", "ProgressBar", "CurvePlotter", "PLOT_EVERY_S", "BAR_EVERY"]

#: Seconds between two redraws of the learning curves during training.
PLOT_EVERY_S = 30.0
#: Steps between two readings of the running loss for the progress bar (each one a device sync).
BAR_EVERY = 10


class EpochMeans:
    """Sums of the train metrics of an epoch's steps, weighted by their batch rows, read once.

    A step's float metrics count only when it was finite (``metrics["nonfinite"]`` false):
    a skipped step's NaN loss would make the whole epoch's mean NaN. Boolean metrics
    (``nonfinite``, ``grads_finite``) are averaged over every step, and the skipped steps are
    counted. Ensemble metrics (one value per member) count each member's finite steps.
    Nothing is read back until :meth:`means` (one device sync).
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.flags: set[str] = set()   # boolean metrics: averaged over every step
        self.rows = 0
        self.last_lr: torch.Tensor | None = None   # the step's metrics["lr"], when it reports one

    def add(self, metrics: dict[str, torch.Tensor], rows: int) -> None:
        """Add one step's ``metrics`` (0-d, or one per ensemble member) for a batch of ``rows`` rows."""
        ok = ~metrics["nonfinite"].detach() if "nonfinite" in metrics else None
        sums = {"finite_rows": rows * (ok.float().mean() if ok is not None else torch.ones(())),
                "skipped_steps": (~ok).any().float() if ok is not None else torch.zeros(())}
        for name, value in metrics.items():
            if name == "lr":   # not averaged: the row shows the epoch's last rate
                continue
            value = value.detach()
            if value.dtype == torch.bool:
                self.flags.add(name)
            elif ok is not None:
                value = torch.where(ok, value.float(), 0.0)
            sums[name] = value.float().mean() * rows   # mean(): ensemble steps report one value per member
        for name, value in sums.items():
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.rows += rows
        self.last_lr = metrics.get("lr", self.last_lr)

    def running_loss(self) -> float:
        """The mean loss so far over finite steps (a device sync)."""
        return (self.sums["loss"] / self.sums["finite_rows"]).item()

    def all_reduce(self) -> None:
        """Average the sums over the ranks of the process group (every rank saw ``rows`` rows)."""
        self.sums = dist.all_reduce_mean(self.sums)

    def means(self) -> dict[str, float]:
        """``{"train_<name>": mean}`` for every metric but ``lr``, and ``skipped_steps`` (int)."""
        values = {name: value.item() for name, value in self.sums.items()}
        finite_rows = values.pop("finite_rows")
        out: dict[str, Any] = {}
        for name, total in values.items():
            if name == "skipped_steps":
                continue
            denominator = self.rows if name in self.flags else finite_rows
            out[f"train_{name}"] = total / denominator if denominator else math.nan
        out["skipped_steps"] = round(values["skipped_steps"])
        return out


def summary_line(row: dict[str, Any], epochs: int) -> str:
    """One line for the log: epoch, losses and accuracies, learning rate, skipped steps (when any), speed."""
    parts = [f"epoch {row['epoch']}/{epochs}"]
    for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
        if row.get(name) is not None:
            parts.append(f"{name}={row[name]:.4g}")
    if row.get("skipped_steps"):
        parts.append(f"skipped_steps={row['skipped_steps']}")
    parts.append(f"{row['samples_per_s']:.0f} ex/s {row['epoch_time']:.1f}s")
    return " ".join(parts)


class ProgressBar:
    """A tqdm bar over an epoch's batches, only when ``show`` and stderr is a terminal."""

    def __init__(self, show: bool, total: int, initial: int, desc: str) -> None:
        self.bar = None
        if show and sys.stderr.isatty():
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)
        self.total, self.tic = total, time.perf_counter()

    def update(self, b: int, means: EpochMeans) -> None:
        """Batch ``b`` done: advance, and every ``BAR_EVERY`` batches show the running loss and speed."""
        if self.bar is None:
            return
        self.bar.update(1)
        if (b + 1) % BAR_EVERY == 0 or b + 1 == self.total:
            elapsed = time.perf_counter() - self.tic
            self.bar.set_postfix(loss=f"{means.running_loss():.4f}", ex_s=f"{means.rows / elapsed:.0f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class CurvePlotter:
    """Draws the learning curves to ``path`` at the end of an epoch when ``PLOT_EVERY_S``
    seconds have passed since the start or the last drawing, and at the end: a job shorter
    than that draws once (a figure costs matplotlib about a second, more than a whole epoch of
    a small model). ``path`` None: nothing."""

    def __init__(self, path: Any) -> None:
        self.path, self.rows, self.when = path, 0, time.perf_counter()

    def _draw(self, rows: Sequence[dict[str, Any]]) -> None:
        plot_history(rows, self.path)
        self.rows, self.when = len(rows), time.perf_counter()

    def epoch_end(self, rows: Sequence[dict[str, Any]]) -> None:
        if self.path is not None and time.perf_counter() - self.when >= PLOT_EVERY_S:
            self._draw(rows)

    def finish(self, rows: Sequence[dict[str, Any]]) -> None:
        if self.path is not None and rows and self.rows != len(rows):
            self._draw(rows)

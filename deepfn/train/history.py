"""Per-epoch training history: :class:`History`, JSON-lines files and learning-curve plots.

A history is a list of flat dicts, one per epoch (``epoch``, ``step``, ``train_loss``,
``val_loss``, ``lr``, ``epoch_time``, ...). JSON lines keep it appendable and readable
line by line while training runs; the plot uses matplotlib's object API with the Agg
canvas, so it never touches pyplot's global figure state or needs a display.

Twin: Keras' ``History`` / ``CSVLogger`` callbacks.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .._atomic import write_atomically
from .._extras import import_extra

__all__ = ["History", "write_history", "append_history", "read_history", "plot_history"]


@dataclass
class History:
    """What :func:`~deepfn.train.fit` did: one row per evaluated epoch, plus the early-stopping outcome.

    Attributes:
        rows: per-epoch dicts: ``epoch``, ``step``, ``train_loss`` (and every other train
            metric as ``train_<name>``, float metrics averaged over the finite steps),
            ``skipped_steps`` (steps whose loss or gradients were not finite), ``val_<name>``,
            ``lr``, ``epoch_time``, ``samples_per_s``, ``partial`` (the epoch was cut short),
            ``train_new_signatures`` and ``eval_new_signatures`` (batch signatures the epoch
            gave the train and eval steps for the first time: compiles of a static-shape
            compiled step; 0 after the first epoch means no recompilation), and
            ``train_compiles`` and ``eval_compiles`` (the programs each step compiled or
            loaded in the epoch, exactly; absent for steps that do not count them).
        best_epoch, best_value: the epoch with the best ``monitor`` value (None if unmonitored).
        stopped_early: patience ran out.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_value: float | None = None
    stopped_early: bool = False

    def column(self, name: str) -> list[Any]:
        """The value of ``name`` in every row (None where a row lacks it)."""
        return [row.get(name) for row in self.rows]


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    # JSON has no NaN/inf; store them as null rather than emitting invalid JSON.
    out = {}
    for k, v in row.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


def write_history(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` as JSON lines to ``path``, replacing the file atomically."""
    write_atomically(path, "".join(json.dumps(_clean(row)) + "\n" for row in rows).encode("utf-8"))


def append_history(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one row to the JSON-lines file ``path`` (created if missing)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(_clean(row)) + "\n")


def read_history(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a JSON-lines history file; ``[]`` when the file does not exist."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _series(rows: Sequence[dict[str, Any]], name: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in rows:
        value = row.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            xs.append(row.get("epoch", len(xs) + 1))
            ys.append(value)
    return xs, ys


def _matplotlib(module: str):
    return import_extra(module, package="matplotlib", extra="plot", needed_by="deepfn.train.plot_history")


def plot_history(rows: Sequence[dict[str, Any]], path: str | os.PathLike, *, title: str | None = None) -> None:
    """Save learning curves (loss, accuracy and learning rate per epoch) as a PNG.

    Panels appear only for the quantities present in ``rows``: ``train_loss``/``val_loss``,
    ``train_accuracy``/``val_accuracy`` (or any other ``train_*``/``val_*`` pair), ``lr``.

    Raises:
        ValueError: ``rows`` is empty.
    """
    if not rows:
        raise ValueError("deepfn.train.plot_history: rows must hold at least one epoch; got []")
    FigureCanvasAgg = _matplotlib("matplotlib.backends.backend_agg").FigureCanvasAgg
    Figure = _matplotlib("matplotlib.figure").Figure

    names = {k[len("train_"):] for r in rows for k in r if k.startswith("train_")}
    names |= {k[len("val_"):] for r in rows for k in r if k.startswith("val_")}
    metrics = [m for m in ("loss", "accuracy") if m in names]
    # Counts that are not learning curves: the compile events (train_/eval_new_signatures, _compiles) among them.
    metrics += sorted(m for m in names if m not in metrics and m not in ("steps", "samples", "new_signatures", "compiles"))
    panels = [m for m in metrics if _series(rows, f"train_{m}")[0] or _series(rows, f"val_{m}")[0]]
    if _series(rows, "lr")[0]:
        panels.append("lr")
    fig = Figure(figsize=(4.5 * max(len(panels), 1), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    for i, name in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        if name == "lr":
            ax.plot(*_series(rows, "lr"), marker=".", color="tab:green")
        else:
            for split, style in (("train", "-"), ("val", "--")):
                xs, ys = _series(rows, f"{split}_{name}")
                if xs:
                    ax.plot(xs, ys, style, marker=".", label=split)
            ax.legend()
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")

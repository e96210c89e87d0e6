"""The training loop: epochs of compiled steps, evaluation, early stopping, checkpoints,
history, learning curves, progress bars and exact resumption.

Twin: the seed's ``MLPTrainer.train`` / Keras' ``Model.fit`` (``EarlyStopping``,
``ModelCheckpoint``, ``CSVLogger``) over deepfn's pure ``step``. Randomness is a function of
the position in training only: epoch ``e`` shuffles with ``fold_in(k_shuffle, e)``, the
update that makes ``train_state.step == s + 1`` uses ``fold_in(k_step, s)`` (and
``fold_in(k_augment, s)`` for ``augment``), so a run resumed from a checkpoint continues
bit-identically.

With ``distributed=True`` under ``torchrun`` the loop is data parallel (twin: DDP with
``DistributedSampler``): every rank reads its shard of each epoch's permutation, metrics and
batch-norm statistics are averaged over ranks, and only rank 0 logs and writes files.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import distributed as dist
from .. import random, tree
from .._checks import describe
from ..checkpoint import CheckpointManager
from ..typing import Key
from .history import plot_history, write_history
from .state import TrainState

__all__ = ["fit", "evaluate", "History"]

_FN = "deepfn.train.fit"


@dataclass
class History:
    """What :func:`fit` did: one row per evaluated epoch, plus the early-stopping outcome.

    Attributes:
        rows: per-epoch dicts: ``epoch``, ``step``, ``train_loss`` (and every other train
            metric as ``train_<name>``), ``val_<name>``, ``lr``, ``epoch_time``,
            ``samples_per_s``, ``partial`` (the epoch was cut short by ``max_steps``).
        best_epoch, best_value: the epoch with the best ``monitor`` value (None if unmonitored).
        stopped_early: patience ran out.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_value: float | None = None
    stopped_early: bool = False

    def column(self, name: str) -> list[Any]:
        return [row.get(name) for row in self.rows]


def _leading(data: Any, name: str) -> int:
    if not isinstance(data, (tuple, list)) or not data or not all(isinstance(t, torch.Tensor) for t in data):
        raise TypeError(f"{_FN}: {name} must be a tuple of tensors (inputs, labels); got {type(data).__name__}")
    sizes = {t.shape[0] if t.ndim else None for t in data}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"{_FN}: every tensor of {name} needs the same leading size; "
                         f"got {[describe(t) for t in data]}")
    return sizes.pop()


def _batch(data: tuple, index: torch.Tensor | slice) -> tuple:
    return tuple(t[index.to(t.device)] if isinstance(index, torch.Tensor) else t[index] for t in data)


def _reduce(totals: dict[str, torch.Tensor], metrics: dict[str, torch.Tensor], weight: int) -> None:
    for name, value in metrics.items():
        # mean(): ensemble steps report one value per member.
        value = value.detach().float().mean() * weight
        totals[name] = totals[name] + value if name in totals else value


def _pair(batch: tuple) -> tuple[Any, Any]:
    if len(batch) != 2:
        raise ValueError(f"{_FN}: data of {len(batch)} tensors needs batch_fn(*tensors) -> (inputs, labels)")
    return batch[0], batch[1]


def _world(distributed: bool) -> tuple[int, int]:
    """``(rank, world_size)`` of the running process group, ``(0, 1)`` when not distributed."""
    if not isinstance(distributed, bool):
        raise TypeError(f"{_FN}: distributed must be a bool; got {type(distributed).__name__}")
    return (dist.rank(), dist.world_size()) if distributed else (0, 1)


def evaluate(eval_step: Callable, params: Any, state: Any, data: tuple, batch_size: int, *,
             batch_fn: Callable[..., tuple[Any, Any]] | None = None, distributed: bool = False) -> dict[str, float]:
    """Mean of ``eval_step(params, state, (inputs, labels))`` over ``data``, weighted by batch size.

    ``data`` is a tuple of tensors of a common leading size, turned into ``(inputs, labels)``
    by ``batch_fn(*tensors)`` (default: the pair itself). One ``.item()`` per metric at the
    end (one device sync). With ``distributed`` (and a process group of ``W`` ranks), every
    rank must call it with the same ``data``: rank ``r`` evaluates the contiguous slice
    ``[r n / W, (r + 1) n / W)`` and the sums are all-reduced, so every rank returns the
    same means over all ``n`` examples.
    """
    n = _leading(data, "data")
    rank, world = _world(distributed)
    if n < world:
        raise ValueError(f"{_FN}: distributed evaluation needs at least one example per rank; "
                         f"got {n} examples for {world} ranks")
    lo, hi = rank * n // world, (rank + 1) * n // world
    totals: dict[str, torch.Tensor] = {}
    for start in range(lo, hi, batch_size):
        batch = _batch(data, slice(start, min(start + batch_size, hi)))
        pair = batch_fn(*batch) if batch_fn is not None else _pair(batch)
        _reduce(totals, eval_step(params, state, pair), batch[0].shape[0])
    if world > 1:
        totals = {k: v * world for k, v in dist.all_reduce_mean(totals).items()}
    return {name: (total / n).item() for name, total in totals.items()}


def _check_args(epochs, batch_size, patience, mode, keep_last, max_steps, log_every, key) -> None:
    for name, value, allow_none in (("epochs", epochs, False), ("batch_size", batch_size, False),
                                    ("patience", patience, True), ("keep_last", keep_last, False),
                                    ("max_steps", max_steps, True), ("log_every", log_every, False)):
        if value is None and allow_none:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{_FN}: {name} must be a positive int{' or None' if allow_none else ''}; got {value!r}")
    if mode not in ("min", "max"):
        raise ValueError(f"{_FN}: mode must be one of ['min', 'max']; got {mode!r}")
    if not isinstance(key, torch.Tensor) or key.dtype != torch.int64 or key.shape != (2,):
        raise TypeError(f"{_FN}: key must be a deepfn.random.key (int64 [2]); got {describe(key)}")


def _improved(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if value is None or math.isnan(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _reordered(batch_order: Callable, key: Key, order: torch.Tensor) -> torch.Tensor:
    new = batch_order(key, order)
    if not isinstance(new, torch.Tensor) or new.shape != order.shape or not torch.equal(
            torch.sort(new.to(order.device)).values, torch.sort(order).values):
        raise ValueError(f"{_FN}: batch_order(key, rows) must return the same {order.numel()} row indices "
                         f"reordered; got {describe(new)}")
    return new.to(order.device)


#: Seconds between two redraws of the learning curves during training.
PLOT_EVERY_S = 30.0


def fit(train_step: Callable, train_state: TrainState, train_data: tuple, *, epochs: int, batch_size: int,
        key: Key, eval_step: Callable | None = None, val_data: tuple | None = None,
        eval_batch_size: int | None = None, patience: int | None = None, monitor: str | None = None,
        mode: str = "min", min_delta: float = 0.0, restore_best: bool = True,
        checkpoint_dir: str | None = None, keep_last: int = 2, resume: bool = False,
        history_path: str | None = None, plot_path: str | None = None,
        batch_fn: Callable[..., tuple[Any, Any]] | None = None,
        augment: Callable[[Key, Any], Any] | None = None, step_key: Callable[[Key], Any] | None = None,
        lr_fn: Callable[[int], float] | None = None, max_steps: int | None = None,
        time_limit_s: float | None = None,
        batch_order: Callable[[Key, torch.Tensor], torch.Tensor] | None = None,
        on_epoch_end: Callable[[TrainState, dict], dict | None] | None = None,
        drop_last: bool = True, distributed: bool = False,
        progress: bool = True, log_every: int = 10, log: Callable[[str], Any] | None = None,
        metadata: dict[str, Any] | None = None) -> tuple[TrainState, History]:
    """Train ``train_state`` for ``epochs`` epochs of ``train_step`` over ``train_data``.

    Each epoch shuffles ``train_data``, runs one ``train_step(train_state, batch, key)`` per
    batch (reading metrics back only every ``log_every`` steps, for the progress bar),
    evaluates ``eval_step`` on ``val_data``, appends a history row, checkpoints and checks
    early stopping.

    Args:
        train_step: ``step(train_state, (inputs, labels), key) -> (train_state, metrics)``, e.g.
            :func:`~deepfn.train.make_train_step` (or an ensemble step with ``step_key``). A step
            made with ``donate=True`` (attribute ``donates``) writes into the states it gets:
            ``fit`` then keeps the best state as a copy, and ``train_state`` itself is used up.
        train_state: the state to start from (ignored when ``resume`` finds a checkpoint).
        train_data, val_data: tuples of tensors with a common leading size ``n``, by default
            ``(inputs, labels)``.
        epochs: total epochs, counting epochs done before a resume.
        batch_size, eval_batch_size: batch sizes (``eval_batch_size`` defaults to ``batch_size``).
        key: the base key of the whole run (split into shuffle, step and augment streams).
        eval_step: ``eval_step(params, state, batch) -> metrics`` (:func:`make_eval_step`).
        patience: stop after this many evaluated epochs without improvement of ``monitor``.
        monitor, mode, min_delta: the early-stopping/best-checkpoint metric (a history column,
            default ``"val_loss"`` with validation data, else ``"train_loss"``), ``"min"`` or
            ``"max"``, and the smallest change that counts as an improvement.
        restore_best: return the best train state seen (by ``monitor``), else the last one.
        checkpoint_dir: write ``ckpt_<step>.safetensors`` here after every epoch (keeping the
            last ``keep_last`` and the best); required by ``resume``.
        resume: continue from the latest checkpoint in ``checkpoint_dir`` (if there is one).
        history_path, plot_path: JSON-lines history (rewritten each epoch) and learning-curve PNG
            (drawn after the first epoch, then at most every ``PLOT_EVERY_S`` seconds, and at the end:
            matplotlib costs ~0.1 s a figure, more than a whole epoch of a small model).
        batch_fn: ``batch_fn(*tensors) -> (inputs, labels)`` for data that is not an
            ``(inputs, labels)`` pair (teacher logits, shifted targets); used for evaluation too.
        augment: ``augment(key, inputs) -> inputs`` applied to training inputs (outside the step).
        step_key: maps each step's key to the key argument of ``train_step`` (for ensembles,
            ``lambda k: random.split(k, n)``).
        lr_fn: ``step -> lr`` to record in the history when the step reports no ``lr``.
        max_steps: stop after this many updates in total (the epoch is then ``partial``).
        time_limit_s: stop (as ``max_steps`` does) once this call has run this many seconds.
        batch_order: ``batch_order(key, rows) -> rows`` rearranges each epoch's shuffled row
            indices (``int64 [m]``, this rank's shard) before they are cut into batches, e.g.
            :func:`deepfn.data.bucket_by_length`; it must return the same rows, reordered.
        on_epoch_end: ``on_epoch_end(train_state, row) -> dict | None`` after evaluation; the
            returned metrics (e.g. ``{"val_bleu": 27.1}``) join the row before early stopping.
        drop_last: drop the last incomplete training batch (one compiled shape).
        distributed: data-parallel over the process group of ``deepfn.distributed.init()``
            (a world of one without ``torchrun``). ``batch_size`` is then the global batch:
            each rank reads ``batch_size / world_size`` rows of its
            :func:`~deepfn.distributed.shard_indices` shard per step (``train_step`` must
            average gradients: ``make_train_step(..., all_reduce=distributed.all_reduce_mean)``).
            Dropout and augmentation keys are folded with the rank; train metrics and the
            floating leaves of ``train_state.state`` (batch-norm statistics) are averaged over
            ranks at each epoch's end; validation is sharded (see :func:`evaluate`); rank 0's
            monitored value decides early stopping everywhere; only rank 0 logs, shows
            progress and writes checkpoints, history and plot; ``resume`` makes every rank
            read rank 0's checkpoint (a folder all ranks see).
        progress: show a tqdm bar (only when stderr is a terminal).
        log: called with a one-line summary after each epoch (e.g. ``print``).
        metadata: JSON-serialisable dict stored in every checkpoint (e.g. the run's config).

    Returns:
        ``(train_state, history)``: the best (``restore_best``) or last train state, and the
        :class:`History`.

    Raises:
        ValueError/TypeError: bad arguments, a ``monitor`` that no row has, too little data,
            a global ``batch_size`` that the world size does not divide.
    """
    _check_args(epochs, batch_size, patience, mode, keep_last, max_steps, log_every, key)
    rank, world = _world(distributed)
    if batch_size % world:
        raise ValueError(f"{_FN}: batch_size={batch_size} is the global batch and must be divisible by the "
                         f"world size; got world_size={world}")
    main = rank == 0
    n = _leading(train_data, "train_data")
    has_val = eval_step is not None and val_data is not None
    if (eval_step is None) != (val_data is None):
        raise ValueError(f"{_FN}: eval_step and val_data go together; got only "
                         f"{'eval_step' if val_data is None else 'val_data'}")
    monitor = monitor or ("val_loss" if has_val else "train_loss")
    if monitor.startswith("val_") and not has_val:
        raise ValueError(f"{_FN}: monitor={monitor!r} needs eval_step and val_data")
    if resume and checkpoint_dir is None:
        raise ValueError(f"{_FN}: resume=True needs checkpoint_dir")
    # Every rank holds shard_size(n, world) examples and reads batch_size / world of them per step.
    n_local, batch_size = (dist.shard_size(n, world), batch_size // world) if distributed else (n, batch_size)
    per_epoch = n_local // batch_size if drop_last else -(-n_local // batch_size)
    if per_epoch == 0:
        each = " per rank" if distributed else ""
        raise ValueError(f"{_FN}: train_data has {n_local} examples{each}, fewer than batch_size={batch_size}{each} "
                         "with drop_last=True")
    k_shuffle, k_step, k_augment = random.split(key, 3)
    k_order = random.split(k_shuffle)[0]
    manager = (CheckpointManager(checkpoint_dir, keep_last=keep_last, monitor=monitor, mode=mode)
               if checkpoint_dir is not None else None)

    own = (lambda k: random.fold_in(k, rank)) if world > 1 else (lambda k: k)  # noqa: E731

    def out_of_time() -> bool:
        late = time_limit_s is not None and time.perf_counter() - start > time_limit_s
        if world > 1 and time_limit_s is not None:   # rank 0's clock decides, or ranks would part ways
            late = bool(dist.broadcast(torch.tensor([int(late)], device=key.device))[0])
        return late

    # A donating step writes into the state it is given: the best state is kept as a copy.
    donating = bool(getattr(train_step, "donates", False))
    keep = (lambda ts: tree.map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, ts)) if (
        donating and restore_best) else (lambda ts: ts)
    history, epoch, skip, wait, best_state = History(), 0, 0, 0, None
    plotted = [0, -math.inf]   # rows in the PNG, when it was drawn
    if resume and world > 1:
        dist.barrier()   # rank 0's files are complete before anyone reads them
    if resume and manager.latest_step() is not None:
        meta = manager.metadata()
        loop = meta["loop"]
        train_state = manager.restore(device=key.device)
        history = History(meta["history"], loop["best_epoch"], loop["best_value"], loop["stopped_early"])
        epoch, skip, wait = loop["epoch"], loop["batch"], loop["wait"]
        best = manager.best_step()
        best_state = manager.restore(best, device=key.device) if best is not None else None
    if best_state is None:
        best_state = keep(train_state)
    step0 = int(train_state.step.reshape(-1)[0])
    step, bar, start = step0, None, time.perf_counter()
    show = progress and main and sys.stderr.isatty()

    while epoch < epochs and not history.stopped_early and (max_steps is None or step < max_steps) and (
            not out_of_time()):
        order = (dist.shard_indices(k_shuffle, epoch, n, rank, world) if distributed
                 else random.permutation(random.fold_in(k_shuffle, epoch), n))
        if batch_order is not None:
            order = _reordered(batch_order, own(random.fold_in(k_order, epoch)), order)
        totals: dict[str, torch.Tensor] = {}
        seen, last_lr, tic = 0, None, time.perf_counter()
        if show:
            from tqdm.auto import tqdm
            bar = tqdm(total=per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                       dynamic_ncols=True)
        b = skip
        for b in range(skip, per_epoch):
            if (max_steps is not None and step >= max_steps) or out_of_time():
                break
            batch = _batch(train_data, order[b * batch_size:(b + 1) * batch_size])
            inputs, labels = batch_fn(*batch) if batch_fn is not None else _pair(batch)
            if augment is not None:
                inputs = augment(own(random.fold_in(k_augment, step)), inputs)
            k = own(random.fold_in(k_step, step))
            train_state, metrics = train_step(train_state, (inputs, labels), step_key(k) if step_key else k)
            rows = batch[0].shape[0]
            _reduce(totals, metrics, rows)
            seen, step = seen + rows, step + 1
            last_lr = metrics.get("lr", last_lr)
            if bar is not None:
                bar.update(1)
                if (b + 1) % log_every == 0 or b + 1 == per_epoch:
                    elapsed = time.perf_counter() - tic
                    bar.set_postfix(loss=f"{(totals['loss'] / seen).item():.4f}", ex_s=f"{seen / elapsed:.0f}")
        else:
            b = per_epoch
        partial = b < per_epoch and seen > 0
        if bar is not None:
            bar.close()
        if seen == 0:
            break
        if world > 1:
            # Every rank saw `seen` rows: the mean of the ranks' sums is the global mean's numerator.
            totals = dist.all_reduce_mean(totals)
            train_state = train_state.replace(state=dist.all_reduce_mean(train_state.state))
        # One sync per epoch: every train metric is read back here, not per step.
        row: dict[str, Any] = {"epoch": epoch + 1, "step": step}
        row.update({f"train_{k}": (v / seen).item() for k, v in totals.items() if k != "lr"})
        lr = last_lr.float().mean().item() if isinstance(last_lr, torch.Tensor) else (
            lr_fn(step - 1) if lr_fn is not None else None)
        if lr is not None:
            row["lr"] = float(lr)
        row["epoch_time"] = time.perf_counter() - tic
        row["samples_per_s"] = seen * world / max(row["epoch_time"], 1e-9)
        if has_val:
            tic = time.perf_counter()
            val = evaluate(eval_step, train_state.params, train_state.state, val_data,
                           eval_batch_size or batch_size * world, batch_fn=batch_fn, distributed=distributed)
            row.update({f"val_{k}": v for k, v in val.items()})
            row["eval_time"] = time.perf_counter() - tic
        row["partial"] = partial
        if on_epoch_end is not None:
            row.update(on_epoch_end(train_state, dict(row)) or {})
        if monitor not in row:
            raise ValueError(f"{_FN}: monitor={monitor!r} is not a history column; got {sorted(row)}")
        value = row[monitor]
        if world > 1:
            value = float(dist.broadcast(torch.tensor([math.nan if value is None else value], dtype=torch.float64,
                                                      device=key.device))[0])
        if _improved(value, history.best_value, mode, min_delta):
            history.best_value, history.best_epoch, best_state, wait = value, epoch + 1, keep(train_state), 0
        elif not partial:
            wait += 1
        history.stopped_early = patience is not None and wait >= patience
        history.rows.append(row)
        if log is not None and main:
            log(_summary(row, epochs))
        epoch, skip = (epoch, b) if partial else (epoch + 1, 0)
        if manager is not None and main:
            loop = {"epoch": epoch, "batch": skip, "wait": wait, "best_epoch": history.best_epoch,
                    "best_value": history.best_value, "stopped_early": history.stopped_early}
            manager.save(step, train_state, metrics={monitor: value},
                         metadata={**(metadata or {}), "loop": loop, "history": history.rows})
        if history_path is not None and main:
            write_history(history_path, history.rows)
        if plot_path is not None and main and time.perf_counter() - plotted[1] >= PLOT_EVERY_S:
            plot_history(history.rows, plot_path)
            plotted[:] = [len(history.rows), time.perf_counter()]
    if plot_path is not None and main and history.rows and plotted[0] != len(history.rows):
        plot_history(history.rows, plot_path)
    return (best_state if restore_best else train_state), history


def _summary(row: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}"]
    for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
        if row.get(name) is not None:
            parts.append(f"{name}={row[name]:.4g}")
    parts.append(f"{row['samples_per_s']:.0f} ex/s {row['epoch_time']:.1f}s")
    return " ".join(parts)

"""The training loop: epochs of steps, evaluation, early stopping, checkpoints and reports,
with exact resumption.

Twin: the seed's ``MLPTrainer.train`` / Keras' ``Model.fit`` (``EarlyStopping``,
``ModelCheckpoint``, ``CSVLogger``) over deepfn's pure ``step``. The loop is :func:`fit`; its
parts are units of their own: :mod:`~deepfn.train.fit_batches` (the order of rows, each
step's batch and key: a function of the position in training only, so a resumed run continues
bit-identically), :mod:`~deepfn.train.early_stopping`, :mod:`~deepfn.train.fit_checkpoints`
(save and resume) and :mod:`~deepfn.train.fit_report` (epoch means, summary line, progress
bar, curves).

With ``distributed=True`` under ``torchrun`` the loop is data parallel (twin: DDP with
``DistributedSampler``): every rank reads its shard of each epoch's permutation, metrics and
batch-norm statistics are averaged over ranks, and only rank 0 logs and writes files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from .. import distributed as dist
from .. import tree
from .._checks import describe
from ..data.padding import pad_rows
from ..typing import Key
from .compile.signatures import CompileCount, SignatureLog
from .early_stopping import EarlyStopping
from .fit_batches import EpochBatches, as_pair, leading_size, take_rows, world_of
from .fit_checkpoints import FitCheckpoints, Resumed, whole
from .fit_report import CurvePlotter, EpochMeans, ProgressBar, summary_line
from .history import History, write_history
from .state import TrainState

__all__ = ["fit", "evaluate", "History"]

_FN = "deepfn.train.fit"


def evaluate(eval_step: Callable, params: Any, state: Any, data: tuple, batch_size: int, *,
             batch_fn: Callable[..., tuple[Any, Any]] | None = None, distributed: bool = False,
             pad_label: int | None = None, signatures: SignatureLog | None = None) -> dict[str, float]:
    """Mean of ``eval_step(params, state, (inputs, labels))`` over ``data``, weighted by batch size.

    ``data`` is a tuple of tensors of a common leading size, turned into ``(inputs, labels)``
    by ``batch_fn(*tensors)`` (default: the pair itself). One ``.item()`` per metric at the
    end (one device sync). With ``distributed`` (and a process group of ``W`` ranks), every
    rank must call it with the same ``data``: rank ``r`` evaluates the contiguous slice
    ``[r n / W, (r + 1) n / W)`` and the sums are all-reduced, so every rank returns the
    same means over all ``n`` examples.

    ``pad_label``: a last batch of fewer than ``batch_size`` rows is padded up to
    ``batch_size`` (:func:`deepfn.data.padding.pad_rows`: copies of its first row, labelled
    ``pad_label``), so that every batch has one shape and a compiled ``eval_step`` compiles
    once. ``eval_step`` must leave that label out of every metric (``make_eval_step(...,
    ignore_index=pad_label)`` with a loss that ignores it, e.g. ``losses.cross_entropy(...,
    ignore_index=pad_label)``); the means are then those of the unpadded batches.
    ``signatures``: a :class:`~deepfn.train.compile.signatures.SignatureLog` that records the
    batches given to ``eval_step``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"deepfn.train.evaluate: batch_size must be a positive int; got {batch_size!r}")
    n = leading_size(data, "data")
    rank, world = world_of(distributed)
    if n < world:
        raise ValueError(f"{_FN}: distributed evaluation needs at least one example per rank; "
                         f"got {n} examples for {world} ranks")
    lo, hi = rank * n // world, (rank + 1) * n // world
    totals: dict[str, torch.Tensor] = {}
    for start in range(lo, hi, batch_size):
        batch = take_rows(data, slice(start, min(start + batch_size, hi)))
        pair = as_pair(batch, batch_fn)
        if pad_label is not None:
            pair = pad_rows(pair, batch_size, pad_label)
        if signatures is not None:
            signatures.see(pair)
        for name, value in eval_step(params, state, pair).items():
            value = value.detach().float().mean() * batch[0].shape[0]
            totals[name] = totals[name] + value if name in totals else value
    if world > 1:
        totals = {k: v * world for k, v in dist.all_reduce_mean(totals).items()}
    return {name: (total / n).item() for name, total in totals.items()}


def fit(train_step: Callable, train_state: TrainState, train_data: tuple, *, epochs: int, batch_size: int,
        key: Key, eval_step: Callable | None = None, val_data: tuple | None = None,
        eval_batch_size: int | None = None, patience: int | None = None, monitor: str | None = None,
        mode: str = "min", min_delta: float = 0.0, restore_best: bool = True, smoothing: int = 1,
        checkpoint_dir: str | None = None, keep_last: int = 2, resume: bool = False,
        history_path: str | None = None, plot_path: str | None = None,
        batch_fn: Callable[..., tuple[Any, Any]] | None = None,
        augment: Callable[[Key, Any], Any] | None = None, step_key: Callable[[Key], Any] | None = None,
        max_steps: int | None = None, time_limit_s: float | None = None,
        batch_order: Callable[[Key, torch.Tensor], torch.Tensor] | None = None,
        on_epoch_end: Callable[[TrainState, dict], dict | None] | None = None,
        drop_last: bool = True, eval_pad_label: int | None = None, distributed: bool = False, progress: bool = True,
        log: Callable[[str], Any] | None = None,
        metadata: dict[str, Any] | None = None) -> tuple[TrainState, History]:
    """Train ``train_state`` for ``epochs`` epochs of ``train_step`` over ``train_data``.

    Each epoch shuffles ``train_data``, runs one ``train_step(train_state, batch, key)`` per
    batch, evaluates ``eval_step`` on ``val_data``, appends a history row, checkpoints and
    checks early stopping. Train metrics are read back once per epoch (and every few steps for
    the progress bar); float metrics are averaged over the finite steps only, and the row's
    ``skipped_steps`` counts the steps the train step skipped (``metrics["nonfinite"]``).
    The row's ``train_new_signatures`` and ``eval_new_signatures`` count the batch signatures
    (structure, shapes, dtypes: :mod:`deepfn.train.compile.signatures`) that the epoch gave
    ``train_step`` and ``eval_step`` for the first time in this call: each is one compile of
    a compiled step with static shapes, so 0 after the first epoch means no recompilation (the
    sizes of a step's ``dynamic_dims`` are left out: it compiles once for all of them).
    ``train_compiles`` and ``eval_compiles`` count exactly the programs each step compiled or
    loaded during the epoch (a guard's recompile and each saved variant included; 0 for eager
    steps; absent for steps that do not count them, such as sharded ones).

    Args:
        train_step: ``step(train_state, (inputs, labels), key) -> (train_state, metrics)``, e.g.
            :func:`~deepfn.train.make_train_step` (or an ensemble step with ``step_key``). A step
            made with ``donate=True`` (attribute ``donates``) writes into the states it gets:
            ``fit`` then keeps the best state as a copy, and ``train_state`` itself is used up.
        train_state: the state to start from; with ``resume``, the template a checkpoint must
            fit (a checkpoint of another model raises ``ValueError``).
        train_data, val_data: tuples of tensors with a common leading size ``n``, by default
            ``(inputs, labels)``.
        epochs: total epochs, counting epochs done before a resume.
        batch_size, eval_batch_size: batch sizes (``eval_batch_size`` defaults to ``batch_size``).
        key: the base key of the whole run (split into shuffle, step and augment streams).
        eval_step: ``eval_step(params, state, batch) -> metrics`` (:func:`make_eval_step`).
        patience: stop after this many complete epochs without improvement of ``monitor``.
        monitor, mode, min_delta: the early-stopping/best-checkpoint metric (a history column,
            default ``"val_loss"`` with validation data, else ``"train_loss"``), ``"min"`` or
            ``"max"``, and the smallest change that counts as an improvement.
        restore_best: return the best train state seen (by ``monitor``), else the last one.
        smoothing: compare the trailing mean of ``monitor`` over this many complete epochs
            (1: the raw value) for the best state, the best checkpoint and early stopping, so
            that one lucky epoch of a small validation split is not the one kept: the best
            epoch is the last of the best window. ``history.best_value`` is that mean.
        checkpoint_dir, keep_last: write ``ckpt_<step>.safetensors`` there after every epoch,
            keeping the last ``keep_last`` and the best; required by ``resume``.
        resume: continue from the newest good checkpoint in ``checkpoint_dir``, if there is one
            (a damaged newest one is skipped with a warning naming it).
        history_path, plot_path: JSON-lines history (rewritten each epoch) and learning-curve PNG
            (at an epoch's end once ``fit_report.PLOT_EVERY_S`` seconds have passed since the
            start or the last drawing, and at the end).
        batch_fn: ``batch_fn(*tensors) -> (inputs, labels)`` for data that is not an
            ``(inputs, labels)`` pair (teacher logits, shifted targets); used for evaluation too.
        augment: ``augment(key, inputs) -> inputs`` applied to training inputs (outside the step).
        step_key: maps each step's key to the key argument of ``train_step`` (for ensembles,
            ``lambda k: random.split(k, n)``).
        max_steps: stop after this many updates in total (the epoch is then ``partial``).
        time_limit_s: stop (as ``max_steps`` does) once this call has run this many seconds.
        batch_order: ``batch_order(key, rows) -> rows`` rearranges each epoch's shuffled row
            indices (``int64 [m]``, this rank's shard) before they are cut into batches, e.g.
            :func:`deepfn.data.bucket_by_length`; it must return the same rows, reordered.
        on_epoch_end: ``on_epoch_end(train_state, row) -> dict | None`` after evaluation; the
            returned metrics (e.g. ``{"val_bleu": 27.1}``) join the row before early stopping.
        drop_last: drop the last incomplete training batch (one compiled shape).
        eval_pad_label: pad the last incomplete validation batch up to ``eval_batch_size`` with
            rows labelled ``eval_pad_label`` (one compiled shape; see :func:`evaluate`).
        distributed: data-parallel over the process group of ``deepfn.distributed.init()``.
            ``batch_size`` is then the global batch: each rank reads ``batch_size / world_size``
            rows of its :func:`~deepfn.distributed.shard_indices` shard per step (``train_step``
            must average gradients: ``make_train_step(..., all_reduce=distributed.all_reduce_mean)``).
            Keys are folded with the rank; train metrics and the floating leaves of
            ``train_state.state`` are averaged over ranks at each epoch's end; validation is
            sharded (see :func:`evaluate`); rank 0's monitored value decides early stopping;
            only rank 0 logs, shows progress and writes files; ``resume`` reads rank 0's
            checkpoint (a folder all ranks see). A sharded ``train_state``
            (``distributed.shard``, stepped by ``make_train_step(..., sharding=...)``) stays
            sharded through the loop and is returned so; validation, ``on_epoch_end`` and the
            checkpoints get it whole (``distributed.unshard`` on every rank), so a checkpoint
            is one full file and a resume (on any world size) shards it again.
        progress: show a tqdm bar (only when stderr is a terminal).
        log: called with a one-line summary after each epoch (e.g. ``print``).
        metadata: JSON-serialisable dict stored in every checkpoint (e.g. the run's config).

    Returns:
        ``(train_state, history)``: the best (``restore_best``) or last train state, and the
        :class:`History`. The learning rate in the rows is the step's ``metrics["lr"]``.

    Raises:
        ValueError/TypeError: bad arguments, a ``monitor`` that no row has, too little data,
            a global ``batch_size`` that the world size does not divide, a checkpoint that
            does not fit ``train_state``.
    """
    _check_args(epochs, batch_size, patience, mode, keep_last, max_steps, key, resume, checkpoint_dir, smoothing)
    batches = EpochBatches(train_data, batch_size, key, distributed=distributed, drop_last=drop_last,
                           batch_fn=batch_fn, augment=augment, batch_order=batch_order, step_key=step_key)
    monitor = _monitor(monitor, eval_step, val_data)
    main, world, device = batches.rank == 0, batches.world, key.device
    saver = FitCheckpoints(checkpoint_dir, keep_last, monitor, mode) if checkpoint_dir is not None else None
    keep = _best_state_keeper(train_step, restore_best)
    run = Resumed(train_state, None, History(), EarlyStopping(mode, min_delta, patience, smoothing=smoothing), 0, 0)
    if resume:
        run = _resume(saver, train_step, run, device, world) or run
    train_state, history, stopping, epoch, skip = run.train_state, run.history, run.stopping, run.epoch, run.batch
    best_state = run.best_state if run.best_state is not None else keep(train_state)
    out_of_time = _Deadline(time_limit_s, world, device)
    validate = _Validation(eval_step, val_data, eval_batch_size or batch_size, batch_fn, distributed, eval_pad_label)
    train_signatures = SignatureLog(getattr(train_step, "dynamic_dims", ()))
    train_compiles = CompileCount(train_step)
    reports = _Reports(main, epochs, log, saver, metadata, history_path, plot_path)
    step = int(train_state.step.reshape(-1)[0])
    more = lambda: (max_steps is None or step < max_steps) and not out_of_time()  # noqa: E731
    while epoch < epochs and not stopping.stopped and more():
        order, means, tic = batches.order(epoch), EpochMeans(), time.perf_counter()
        bar = ProgressBar(progress and main, batches.per_epoch, skip, f"epoch {epoch + 1}/{epochs}")
        b = skip
        for b in range(skip, batches.per_epoch):
            if not more():
                break
            batch, step_key_b, rows = batches.batch(order, b, step)
            train_signatures.see(batch)
            train_state, metrics = train_step(train_state, batch, step_key_b)
            means.add(metrics, rows)
            step += 1
            bar.update(b, means)
        else:
            b = batches.per_epoch
        bar.close()
        if means.rows == 0:
            break
        partial = b < batches.per_epoch
        train_state, row = _epoch_row(means, train_state, epoch, step, tic, partial, world, validate, on_epoch_end,
                                      train_signatures, train_compiles)
        value = _monitored(row, monitor, world, device)
        if stopping.observe(value, epoch + 1, partial):   # stopping.last_value: ``value`` smoothed
            best_state = keep(train_state)
        history.rows.append(row)
        history.best_epoch, history.best_value, history.stopped_early = (
            stopping.best_epoch, stopping.best_value, stopping.stopped)
        epoch, skip = (epoch, b) if partial else (epoch + 1, 0)
        reports.epoch_end(row, whole(train_state), stopping.last_value, history, stopping, epoch, skip)
    reports.finish(history)
    return (best_state if restore_best else train_state), history


def _check_args(epochs, batch_size, patience, mode, keep_last, max_steps, key, resume, checkpoint_dir,
                smoothing) -> None:
    for name, value, allow_none in (("epochs", epochs, False), ("batch_size", batch_size, False),
                                    ("patience", patience, True), ("keep_last", keep_last, False),
                                    ("max_steps", max_steps, True), ("smoothing", smoothing, False)):
        if value is None and allow_none:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{_FN}: {name} must be a positive int{' or None' if allow_none else ''}; got {value!r}")
    if mode not in ("min", "max"):
        raise ValueError(f"{_FN}: mode must be one of ['min', 'max']; got {mode!r}")
    if not isinstance(key, torch.Tensor) or key.dtype != torch.int64 or key.shape != (2,):
        raise TypeError(f"{_FN}: key must be a deepfn.random.key (int64 [2]); got {describe(key)}")
    if resume and checkpoint_dir is None:
        raise ValueError(f"{_FN}: resume=True needs checkpoint_dir")


def _monitor(monitor: str | None, eval_step: Callable | None, val_data: tuple | None) -> str:
    """The monitored history column: ``monitor``, or ``val_loss`` / ``train_loss`` by default."""
    if (eval_step is None) != (val_data is None):
        raise ValueError(f"{_FN}: eval_step and val_data go together; got only "
                         f"{'eval_step' if val_data is None else 'val_data'}")
    has_val = eval_step is not None
    monitor = monitor or ("val_loss" if has_val else "train_loss")
    if monitor.startswith("val_") and not has_val:
        raise ValueError(f"{_FN}: monitor={monitor!r} needs eval_step and val_data")
    return monitor


def _best_state_keeper(train_step: Callable, restore_best: bool) -> Callable[[TrainState], TrainState]:
    """How the best state is kept: as it is, or as a copy when the step donates (writes into it)."""
    if restore_best and getattr(train_step, "donates", False):
        return lambda ts: tree.map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, ts)
    return lambda ts: ts


def _resume(saver: FitCheckpoints, train_step: Callable, start: Resumed, device: torch.device,
            world: int) -> Resumed | None:
    """The run restored from ``saver``'s newest good checkpoint (None: there is none)."""
    if world > 1:
        dist.barrier()   # rank 0's files are complete before anyone reads them
    like = start.train_state
    step_scale = getattr(train_step, "loss_scale", None)
    if like.loss_scale is None and step_scale is not None:
        like = like.replace(loss_scale=step_scale)   # the step adds its scale to the states it returns
    return saver.resume(like, device, start.stopping)


class _Deadline:
    """``deadline()``: whether ``time_limit_s`` seconds have passed since it was made (rank 0's
    clock decides for every rank, or ranks would part ways)."""

    def __init__(self, time_limit_s: float | None, world: int, device: torch.device) -> None:
        self.limit, self.world, self.device, self.start = time_limit_s, world, device, time.perf_counter()

    def __call__(self) -> bool:
        if self.limit is None:
            return False
        late = time.perf_counter() - self.start > self.limit
        if self.world > 1:
            late = bool(dist.broadcast(torch.tensor([int(late)], device=self.device))[0])
        return late


class _Validation:
    """Evaluation after each epoch: ``evaluate(eval_step, ..., val_data, ...)``, or nothing."""

    def __init__(self, eval_step: Callable | None, val_data: tuple | None, batch_size: int,
                 batch_fn: Callable | None, distributed: bool, pad_label: int | None) -> None:
        self.eval_step, self.data, self.batch_size = eval_step, val_data, batch_size
        self.batch_fn, self.distributed, self.pad_label = batch_fn, distributed, pad_label
        self.signatures = SignatureLog(getattr(eval_step, "dynamic_dims", ()))
        self.compiles = CompileCount(eval_step)

    def __call__(self, train_state: TrainState) -> dict[str, Any]:
        """``{"val_<name>": mean, "eval_time": seconds, "eval_new_signatures": count,
        "eval_compiles": count}`` (the last for a step that counts its programs), or ``{}``
        without an ``eval_step``."""
        if self.eval_step is None:
            return {}
        tic = time.perf_counter()
        val = evaluate(self.eval_step, train_state.params, train_state.state, self.data, self.batch_size,
                       batch_fn=self.batch_fn, distributed=self.distributed, pad_label=self.pad_label,
                       signatures=self.signatures)
        row = {**{f"val_{k}": v for k, v in val.items()}, "eval_time": time.perf_counter() - tic,
               "eval_new_signatures": self.signatures.take_new()}
        self.compiles.record(row, "eval_compiles")
        return row


def _epoch_row(means: EpochMeans, train_state: TrainState, epoch: int, step: int, tic: float, partial: bool,
               world: int, validate: _Validation, on_epoch_end: Callable | None,
               train_signatures: SignatureLog, train_compiles: CompileCount) -> tuple[TrainState, dict[str, Any]]:
    """The history row of an epoch (and the train state with rank-averaged model state)."""
    if world > 1:
        # Every rank saw the same number of rows: the mean of the ranks' sums is the global mean's numerator.
        means.all_reduce()
        train_state = train_state.replace(state=dist.all_reduce_mean(train_state.state))
    row: dict[str, Any] = {"epoch": epoch + 1, "step": step, **means.means()}
    if means.last_lr is not None:
        row["lr"] = means.last_lr.float().mean().item()
    row["epoch_time"] = time.perf_counter() - tic
    row["samples_per_s"] = means.rows * world / max(row["epoch_time"], 1e-9)
    row["train_new_signatures"] = train_signatures.take_new()
    train_compiles.record(row, "train_compiles")
    full = whole(train_state)   # a sharded state is evaluated whole
    row.update(validate(full))
    row["partial"] = partial
    if on_epoch_end is not None:
        row.update(on_epoch_end(full, dict(row)) or {})
    return train_state, row


def _monitored(row: dict[str, Any], monitor: str, world: int, device: torch.device) -> float | None:
    """The row's ``monitor`` value (rank 0's on every rank)."""
    if monitor not in row:
        raise ValueError(f"{_FN}: monitor={monitor!r} is not a history column; got {sorted(row)}")
    value = row[monitor]
    if world > 1:
        value = float(dist.broadcast(torch.tensor([float("nan") if value is None else value],
                                                  dtype=torch.float64, device=device))[0])
    return value


class _Reports:
    """Rank 0's reports of each epoch: the summary line, the checkpoint, the history file and
    the curves (none on other ranks)."""

    def __init__(self, main: bool, epochs: int, log: Callable | None, saver: FitCheckpoints | None,
                 metadata: dict | None, history_path: str | None, plot_path: str | None) -> None:
        self.main, self.epochs, self.log, self.saver, self.metadata = main, epochs, log, saver, metadata
        self.history_path, self.plotter = history_path, CurvePlotter(plot_path)

    def epoch_end(self, row: dict[str, Any], train_state: TrainState, value: float | None, history: History,
                  stopping: EarlyStopping, epoch: int, batch: int) -> None:
        """After the row of an epoch; the loop goes on at ``epoch``, batch ``batch``."""
        if not self.main:
            return
        if self.log is not None:
            self.log(summary_line(row, self.epochs))
        if self.saver is not None:
            self.saver.save(row["step"], train_state, value, history, stopping, epoch, batch, self.metadata)
        if self.history_path is not None:
            write_history(self.history_path, history.rows)
        self.plotter.epoch_end(history.rows)

    def finish(self, history: History) -> None:
        if self.main:
            self.plotter.finish(history.rows)

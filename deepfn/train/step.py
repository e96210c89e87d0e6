"""One pure optimizer update: forward, ``grad``, accumulation, unscaling and the finite check,
clipping, the skip of a non-finite step, the optimizer's update and the metrics.

Twin: the body of a PyTorch training loop (``zero_grad``, autocast forward, ``GradScaler``
``scale``/``unscale_``/``step``/``update``, ``clip_grad_norm_``, ``optimizer.step``), written
as ``train_state, metrics = step(train_state, (inputs, labels), key)``.

:func:`build_train_step` is the reference step, read top to bottom. Its accelerations live in
named modules, each equal to the reference it replaces: :mod:`~deepfn.train.grad_engines`
(which engine takes the gradient), :mod:`~deepfn.train.finite` (fused unscale-and-check, the
skip as a branch), :mod:`~deepfn.train.donate` (updates written into the given state),
:mod:`~deepfn.train.compile.split` (``compile="split"``) and
:mod:`~deepfn.train.compile.saved` (one compiled graph, saved steps).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from .. import distributed, optim, tree
from ..amp import NoOpLossScale, Policy
from ..optim.clipping import clip_given_norm
from ..typing import Block, Key, PyTree, State, Tensor
from .compile import compiled, no_programs, require_compiled, split_compiled
from .compile.dynamic import DynamicDims, check_dynamic_dims
from .donate import UnaliasedCheck, make_donated_update
from .finite import keep_if, unscale_and_check
from .grad_engines import OVERLAP, accumulate_micro_batch, choose_engine
from .objective import forward, make_objective, micro_batch, micro_key, with_accuracy
from .state import TrainState
from .step_checks import check_batch, check_step_options, surface_model_errors

__all__ = ["make_train_step", "build_train_step"]

Step = Callable[[TrainState, tuple[Any, Any], Key | None], tuple[TrainState, dict[str, Tensor]]]


def build_train_step(model: Block, loss_fn: Callable[[Tensor, Any], Tensor], optimizer: Any, *,
                     policy: Policy | None = None, accumulation_steps: int = 1, clip_norm: float | None = None,
                     all_reduce: Callable[[PyTree], PyTree] | None = None, lr: Any = None,
                     ignore_index: int | None = None, donate: bool = False, split_compile: bool = False,
                     compile_cache: str | os.PathLike | None = None, dynamic_dims: tuple[int, ...] = ()) -> Step:
    """The uncompiled step behind :func:`make_train_step` (for ``vmap``: ensembles), with the
    same options; pure unless ``donate``. ``split_compile``: the forward pass is compiled
    (saved in ``compile_cache`` when given, ``dynamic_dims`` of its inputs and labels as symbols)
    and differentiated eagerly, as ``compile="split"``."""
    k = accumulation_steps
    objective = with_accuracy(make_objective(model, loss_fn, policy), ignore_index)
    # objective(params, state, inputs, labels, key, scaler): the batch is arguments 2 and 3
    dynamic = DynamicDims((2, 3), dynamic_dims) if dynamic_dims else None
    eager_objective = (split_compiled(objective, compile_cache, "deepfn.train.make_train_step: step", dynamic)
                       if split_compile else objective)
    owned = all_reduce is None or all_reduce is distributed.all_reduce_mean   # gradients no one else holds
    update = _reference_update(optimizer)
    if donate:
        update = make_donated_update(optimizer, update)

    def step(ts: TrainState, batch: tuple[Any, Any], key: Key | None) -> tuple[TrainState, dict[str, Tensor]]:
        scaler = ts.loss_scale if ts.loss_scale is not None else NoOpLossScale()
        inputs, labels = batch
        # Forward and grad per micro-batch, summed; batch-norm state threads through them in order.
        # A Python loop over static slices: a compiled graph holds all k, each one's activations
        # freed before the next forward.
        engine = choose_engine(ts.params, all_reduce)
        grads, state, losses, accs = None, ts.state, [], []
        for i in range(k):
            x, y = micro_batch(inputs, k, i), micro_batch(labels, k, i)
            grads, (_, (loss, acc, state)) = accumulate_micro_batch(
                engine, objective, eager_objective, ts.params, (state, x, y, micro_key(key, k, i), scaler),
                grads, last=i == k - 1, k=k)
            losses.append(loss)
            accs.append(acc)
        if engine != OVERLAP:   # (the overlapped engine has divided and all-reduced already)
            grads = tree.map(lambda g: g / k, grads) if k > 1 else grads   # mean loss: the whole batch's gradient
            grads = all_reduce(grads) if all_reduce is not None else grads
        grads, grads_ok, grad_norm = unscale_and_check(ts.loss_scale, grads, owned)
        if clip_norm is not None:
            grads = clip_given_norm(grads, clip_norm, grad_norm, inplace=owned)
        loss = torch.stack(losses).mean()
        # Skip (GradScaler's, and without a loss scale too): a step whose loss or unscaled
        # gradients are not finite keeps params, optimizer state and model state.
        ok = grads_ok & torch.isfinite(loss)
        params, opt_state, state = update(ts, grads, state, ok)
        metrics = {"loss": loss, "grad_norm": grad_norm}
        if accs[0] is not None:
            metrics["accuracy"] = torch.stack(accs).mean()
        if lr is not None:
            rate = lr(ts.step) if callable(lr) else lr
            metrics["lr"] = torch.as_tensor(rate, dtype=torch.float32, device=grad_norm.device)
        metrics["nonfinite"] = ~ok
        if ts.loss_scale is not None:
            metrics["loss_scale"], metrics["grads_finite"] = scaler.loss_scale, grads_ok
            scaler = scaler.adjust(grads_ok)
        return TrainState(params, state, opt_state, ts.step + 1,
                          scaler if ts.loss_scale is not None else None), metrics

    if split_compile:   # the compiled forward's count, for make_train_step's step
        step.compiled_programs = eager_objective.compiled_programs
    return step


def _reference_update(optimizer: Any) -> Callable[[TrainState, PyTree, State, Tensor], tuple[PyTree, PyTree, State]]:
    """``update(ts, grads, new_state, ok) -> (params, opt_state, state)``: the optimizer's update,
    or ``ts``'s own trees where ``ok`` is false."""
    # Read once here, not while tracing: an attribute of a function is a guard that a saved
    # compiled step (deepfn.train.compile.saved) cannot rebuild.
    fresh = bool(getattr(optimizer.update, "fresh", False))

    def update(ts: TrainState, grads: PyTree, new_state: State, ok: Tensor) -> tuple[PyTree, PyTree, State]:
        updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
        # The optimizer's fresh updates belong to this step alone: the new params may reuse them.
        params = optim.apply_updates(ts.params, updates, donate_updates=fresh)
        # One selection over all the trees: each tree walk costs Dynamo ~0.1 s to trace.
        return keep_if(ok, (params, opt_state, new_state), (ts.params, ts.opt_state, ts.state))

    return update


def make_train_step(model: Block, loss_fn: Callable[[Tensor, Any], Tensor], optimizer: Any, *,
                    policy: Policy | None = None, loss_scale: Any = None, accumulation_steps: int = 1,
                    clip_norm: float | None = None, all_reduce: Callable[[PyTree], PyTree] | None = None,
                    compile: bool | str = True, lr: Any = None, ignore_index: int | None = None,
                    donate: bool = False, compile_cache: str | os.PathLike | None = None,
                    sharding: str | None = None, dynamic_dims: int | tuple[int, ...] | None = None) -> Step:
    """Build ``step(train_state, (inputs, labels), key) -> (train_state, metrics)``: one update.

    Args:
        model: a block; ``model.apply(params, state, *inputs, key=key, train=True)`` gives logits.
            ``inputs`` is a tensor or a tuple of tensors (e.g. ``(src, tgt)``).
        loss_fn: ``loss_fn(logits, labels) -> scalar`` with mean reduction (``losses.cross_entropy``).
        optimizer: a ``GradientTransformation`` (``init``, ``update``) from ``deepfn.optim``.
        policy: an ``amp.Policy``: params and floating inputs cast to ``compute_dtype`` inside the
            differentiated function, logits to ``output_dtype``; the loss in float32, gradients
            in the params' dtype.
        loss_scale: an ``amp.DynamicLossScale`` used when the train state carries none
            (``TrainState.loss_scale`` takes precedence): the loss is scaled, gradients
            unscaled and the scale adjusted each step, like ``GradScaler``.
        accumulation_steps: ``k`` equal micro-batches (leading axis) per update, equal to the whole
            batch's update without batch norm or dropout (dropout keys ``random.fold_in(key, i)``,
            batch-norm state threaded through the micro-batches in order).
        clip_norm: clip the unscaled gradient's global norm, as ``optim.clip_by_global_norm``.
        all_reduce: a function over the gradient tree (``distributed.all_reduce_mean``), once per
            update before unscaling (eagerly with peers, during the last backward pass: see
            :mod:`deepfn.train.grad_engines`; the result is the same).
        compile: ``True``: the whole step is one ``torch.compile(fullgraph=True)`` graph (least
            per-call overhead; ``"whole"`` is accepted as the same). ``"split"``: the forward is
            compiled and differentiated eagerly, the rest runs eagerly (half the compile time,
            ``remat`` recomputed: :mod:`deepfn.train.compile.split`). ``False``: eager. The
            numbers are the same up to float rounding in every mode.
        lr: a float or a schedule ``step -> lr``, only to report ``metrics["lr"]``.
        ignore_index: labels left out of ``metrics["accuracy"]`` (padding).
        donate: the caller gives up each ``train_state`` it passes in: the new params and
            optimizer state are written into its tensors (:mod:`deepfn.train.donate`), the same
            numbers with less memory traffic. Read only the returned state afterwards (to keep an
            old one, ``tree.map(torch.clone, ...)`` it first). Ignored under ``vmap``.
        compile_cache: a directory where the compiled step is saved, one file per input
            signature, and loaded by a later process with the same model, settings, sources and
            versions (:mod:`deepfn.train.compile.saved`). The folder holds code (a saved step
            is unpickled): only point it at a folder you trust. deepfn creates it ``0700`` and
            writes files ``0600``; a folder or file that another user owns or can write, or a
            file whose HMAC (per-user key) does not match, is not opened: a warning, then the
            step compiles again (unsaved, if the folder itself is not trusted).
        sharding: ``None`` (every rank holds the whole state), ``"optimizer"`` (ZeRO-1) or
            ``"full"`` (ZeRO-3): the step takes and returns this rank's
            ``distributed.ShardedTrainState`` (from ``distributed.shard``), averages gradients
            over ranks itself (leave ``all_reduce`` out) and clips by the global norm across
            shards (:mod:`deepfn.train.sharded`). ``compile=True`` compiles the forward and
            backward and the update apart, the collectives running eagerly between them; not
            with ``compile="split"`` or ``compile_cache``.
        dynamic_dims: dims of every tensor of the batch (inputs and labels, as the step gets
            them) whose sizes change from call to call, e.g. ``(1,)`` for ``[B, T]`` token
            batches of any width: the step compiles once with those sizes as symbols instead of
            once per size, and saves one file for all of them in ``compile_cache``
            (:mod:`deepfn.train.compile.dynamic`). Sizes 0 and 1 are not symbolic (a batch with
            one compiles once more). Eager steps take any size anyway. Not with ``sharding``.

    Returns:
        The step (attributes ``donates``, ``loss_scale`` and ``dynamic_dims``). ``metrics`` maps ``loss`` (mean, float32), ``grad_norm``
        (before clipping), ``accuracy`` (integer labels of the logits' leading shape), ``lr`` (when
        given), ``nonfinite`` (bool: the step was skipped) and, with a loss scale, ``loss_scale``
        and ``grads_finite``, all 0-d tensors; nothing calls ``.item()``. ``step`` grows by one.

    A step whose loss or unscaled gradients hold inf/NaN is skipped: params, optimizer state and
    model state (batch-norm statistics) stay as they were, with or without a loss scale, and
    ``metrics["nonfinite"]`` is set; nothing is raised (``fit`` reports skipped steps). Bad
    shapes or token ids raise the model's own ``ValueError`` / ``TypeError``, compiled or not.
    """
    fn = "deepfn.train.make_train_step"
    check_step_options(fn, optimizer, policy, accumulation_steps, clip_norm, compile)
    if not callable(loss_fn):
        raise TypeError(f"{fn}: loss_fn must be callable loss_fn(logits, labels) -> scalar "
                        f"(e.g. deepfn.losses.cross_entropy); got {type(loss_fn).__name__} {loss_fn!r}")
    require_compiled(fn, compile_cache, compile, "compile=True, 'whole' or 'split'")
    dims = check_dynamic_dims(fn, dynamic_dims)
    if sharding is not None:
        if dims:
            raise ValueError(f"{fn}: dynamic_dims is not available with sharding={sharding!r} (its compiled "
                             f"graphs are static-shape); pad batches to a few widths instead; got {dynamic_dims!r}")
        return _sharded_step(fn, model, loss_fn, optimizer, sharding, policy=policy, loss_scale=loss_scale,
                             accumulation_steps=accumulation_steps, clip_norm=clip_norm, all_reduce=all_reduce,
                             compile=compile, lr=lr, ignore_index=ignore_index, donate=donate,
                             compile_cache=compile_cache)
    split = compile == "split"
    pure = build_train_step(model, loss_fn, optimizer, policy=policy, accumulation_steps=accumulation_steps,
                            clip_norm=clip_norm, all_reduce=all_reduce, lr=lr, ignore_index=ignore_index,
                            donate=donate, split_compile=split, compile_cache=compile_cache if split else None,
                            dynamic_dims=dims)
    # step(ts, batch, key): the batch is argument 1
    dynamic = DynamicDims((1,), dims) if dims else None
    run = compiled(pure, compile_cache, f"{fn}: step", dynamic=dynamic) if compile and not split else pure
    unaliased = UnaliasedCheck(f"{fn}: step (donate=True)") if donate else None

    def diagnose(ts: TrainState, batch: tuple[Any, Any], key: Key | None) -> None:
        forward(model, policy, ts.params, ts.state, micro_batch(batch[0], accumulation_steps, 0), key, True)

    def step(train_state: TrainState, batch: tuple[Any, Any], key: Key | None):
        if not isinstance(train_state, TrainState):
            raise TypeError(f"{fn}: step needs a TrainState; got {type(train_state).__name__}")
        if isinstance(train_state, distributed.ShardedTrainState):
            raise TypeError(f"{fn}: the train state is sharded ({train_state.sharding!r}); make the step with "
                            f"make_train_step(..., sharding={train_state.sharding!r})")
        check_batch(f"{fn}: step", batch, accumulation_steps)
        if train_state.loss_scale is None and loss_scale is not None:
            train_state = train_state.replace(loss_scale=loss_scale)
        if unaliased is not None:
            unaliased(train_state)
        out = surface_model_errors(run, diagnose, bool(compile), train_state, tuple(batch), key)
        if unaliased is not None:
            unaliased.returned(out[0])
        return out

    step.donates = bool(donate)
    step.loss_scale = loss_scale   # fit completes a resume template with it
    step.dynamic_dims = dims   # fit counts compile events with it
    step.compiled_programs = getattr(run, "compiled_programs", no_programs)   # and with this
    return step


def _sharded_step(fn: str, model: Block, loss_fn: Callable, optimizer: Any, sharding: str, *,
                  loss_scale: Any, all_reduce: Any, compile: bool | str, compile_cache: Any, donate: bool,
                  accumulation_steps: int, **options: Any) -> Step:
    """``make_train_step(..., sharding=...)``: :func:`deepfn.train.sharded.build_sharded_train_step`
    behind the same checks of the state and the batch."""
    from .sharded import build_sharded_train_step

    if all_reduce is not None:
        raise ValueError(f"{fn}: a sharded step averages gradients itself (reduce-scatter); leave all_reduce "
                         f"None with sharding={sharding!r}; got {all_reduce!r}")
    if compile == "split" or compile_cache is not None:
        raise ValueError(f"{fn}: sharding={sharding!r} compiles with compile=True or runs eagerly with "
                         f"compile=False; compile='split' and compile_cache are not available with it")
    run = build_sharded_train_step(model, loss_fn, optimizer, sharding, accumulation_steps=accumulation_steps,
                                   compile=bool(compile), donate=donate, **options)

    def step(train_state: TrainState, batch: tuple[Any, Any], key: Key | None):
        check_batch(f"{fn}: step", batch, accumulation_steps)
        if isinstance(train_state, TrainState) and train_state.loss_scale is None and loss_scale is not None:
            train_state = train_state.replace(loss_scale=loss_scale)
        return run(train_state, tuple(batch), key)

    step.donates = bool(donate)
    step.loss_scale = loss_scale
    return step

"""One pure, compiled optimizer update: grad, mixed precision, loss scaling, accumulation,
clipping and an optional gradient all-reduce, composed in a single function.

Twin: the body of a PyTorch training loop (``zero_grad``, autocast forward, ``GradScaler``
``scale``/``unscale_``/``step``/``update``, ``clip_grad_norm_``, ``optimizer.step``), written
as ``train_state, metrics = step(train_state, (inputs, labels), key)``.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Callable
from typing import Any

import torch

from .. import _flat, distributed, optim, random, tree
from .._autograd import autograd_grad_and_value
from .._checks import describe
from .._eager import plain_eager
from ..amp import NoOpLossScale, Policy, all_finite
from ..optim import _ops as optim_ops
from ..remat import differentiated_outside
from ..typing import Block, Key, Params, PyTree, State, Tensor
from .compile_cache import compiled, require_compiled
from .state import TrainState

__all__ = ["make_train_step", "make_eval_step", "build_train_step"]


def _forward(model: Block, policy: Policy | None, params: Params, state: State, inputs: Any,
             key: Key | None, train: bool) -> tuple[Tensor, State]:
    if policy is not None:
        params, inputs = policy.cast_to_compute(params), policy.cast_to_compute(inputs)
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    logits, new_state = model.apply(params, state, *args, key=key, train=train)
    if policy is not None:
        logits = policy.cast_to_output(logits)
        # The state keeps its stored dtypes (fp32 running statistics under a bf16 policy).
        new_state = tree.map(lambda n, o: n.to(o.dtype), new_state, state)
    return logits, new_state


def _accuracy(logits: Tensor, labels: Any, ignore_index: int | None = None) -> Tensor | None:
    """Share of ``argmax(logits) == labels`` over the labels that count (not ``ignore_index``)."""
    usable = (isinstance(labels, torch.Tensor) and not labels.is_floating_point()
              and labels.dtype != torch.bool and logits.shape[:-1] == labels.shape)
    if not usable:
        return None
    hit = (logits.argmax(-1) == labels).float()
    if ignore_index is None:
        return hit.mean()
    counted = (labels != ignore_index).float()
    return (hit * counted).sum() / counted.sum().clamp(min=1.0)


def _micro(x: Any, k: int, i: int) -> Any:
    return tree.map(lambda t: t[i * (t.shape[0] // k):(i + 1) * (t.shape[0] // k)], x)


def build_train_step(model: Block, loss_fn: Callable[[Tensor, Any], Tensor], optimizer: Any, *,
                     policy: Policy | None = None, accumulation_steps: int = 1,
                     clip_norm: float | None = None,
                     all_reduce: Callable[[PyTree], PyTree] | None = None, lr: Any = None,
                     ignore_index: int | None = None, donate: bool = False, split_compile: bool = False,
                     compile_cache: str | os.PathLike | None = None) -> Callable:
    """The uncompiled step behind :func:`make_train_step` (for ``vmap``: ensembles); pure unless ``donate``.

    ``split_compile``: the forward pass is compiled and differentiated by ``torch.autograd``;
    the rest of the step runs eagerly (see ``make_train_step(compile="split")``);
    ``compile_cache`` then saves that compiled forward and backward (see ``make_train_step``).
    """
    k = accumulation_steps
    donate_kw = {"donate_state": True} if donate and optim.donates(optimizer) else {}
    # The gradients are this step's own tensors unless a user's all_reduce returned others.
    owned = all_reduce is None or all_reduce is distributed.all_reduce_mean
    # Read once here, not while tracing: an attribute of a function is a guard that a saved
    # compiled step (deepfn.train.compile_cache) cannot rebuild.
    fresh_updates = bool(getattr(optimizer.update, "fresh", False))
    # An optimizer's own donated form (AdamW: torch.optim's order, fewer passes), eager only.
    in_place = getattr(optimizer.update, "in_place", None) if donate_kw else None

    def objective(params, state, inputs, labels, key, scaler):
        logits, new_state = _forward(model, policy, params, state, inputs, key, True)
        loss = loss_fn(logits, labels).float()
        return scaler.scale(loss), (loss, logits, new_state)

    def grad_fn(params, *args):
        # torch.func.grad_and_value over the flat list of parameters: functorch flattens its
        # argument with torch.utils._pytree, whose TreeSpec per dict node costs Dynamo ~5 ms
        # of tracing each (hundreds per model); one list node does not.
        flat, spec = _flat.flatten(params)

        def on_flat(flat_params, *rest):
            return objective(_flat.unflatten(spec, flat_params), *rest)
        g, out = torch.func.grad_and_value(on_flat, has_aux=True)(flat, *args)
        return _flat.unflatten(spec, g), out
    eager_objective = objective
    if split_compile:
        # AOTAutograd compiles the forward and its backward (torch.compile(nn.Module)'s way).
        compiled_objective = compiled(objective, compile_cache, "deepfn.train.make_train_step: step")

        def eager_objective(*args):
            with differentiated_outside():   # remat regions become checkpoint regions
                return compiled_objective(*args)

    def gradients(ts: TrainState, batch: tuple[Any, Any], key: Key | None, scaler: Any):
        """The (all-reduced) mean gradient over the k micro-batches, their losses and accuracies, the new state."""
        inputs, labels = batch
        state, grads, losses, accs = ts.state, None, [], []
        # (Not even the leaves while compiling: a tree walk costs Dynamo ~0.1 s to trace.)
        plain = not torch.compiler.is_compiling() and plain_eager(
            x for x in tree.leaves(ts.params) if isinstance(x, torch.Tensor))
        # all_reduce_mean itself, eager, on plain tensors, with peers: all-reduce each bucket
        # during backward (DDP's overlap). Compiled or under vmap: after backward.
        overlap = plain and all_reduce is distributed.all_reduce_mean and distributed.world_size() > 1
        # A Python loop over static slices: the compiled graph holds all k micro-batches,
        # and each one's activations are freed before the next forward.
        for i in range(k):
            k_i = key if (k == 1 or key is None) else random.fold_in(key, i)
            args = (state, _micro(inputs, k, i), _micro(labels, k, i), k_i, scaler)
            if overlap and i == k - 1:   # the last micro-batch's backward carries the all-reduce
                grads, (_, (loss, logits, state)) = distributed.grad_and_all_reduce_mean(
                    eager_objective, ts.params, *args, accumulated=grads, divide_by=k)
            else:
                g, (_, (loss, logits, state)) = (autograd_grad_and_value(eager_objective, ts.params, *args) if plain
                                                 else grad_fn(ts.params, *args))
                grads = g if grads is None else tree.map(torch.add, grads, g)
            losses.append(loss)
            accs.append(_accuracy(logits, _micro(labels, k, i), ignore_index))
        if k > 1 and not overlap:
            grads = tree.map(lambda g: g / k, grads)   # mean losses: the full batch's gradient
        if all_reduce is not None and not overlap:
            grads = all_reduce(grads)
        return grads, state, torch.stack(losses), (torch.stack(accs) if accs[0] is not None else None)

    def update(ts: TrainState, grads: PyTree, state: State, losses: Tensor, accs: Tensor | None):
        """Unscale, check, clip, update (or skip) and the metrics: the step after its gradients."""
        scaling = ts.loss_scale is not None
        scaler = ts.loss_scale if scaling else NoOpLossScale()
        if scaling:
            grads, grads_ok = _unscale_and_check(scaler, grads, owned)
        grad_norm = tree.global_norm(grads)
        if not scaling:   # nothing to unscale: the norm often settles the check
            grads_ok = (_finite_given_norm(grad_norm, grads) if _readable_on_host(grad_norm)
                        else _unscale_and_check(scaler, grads, owned)[1])
        if clip_norm is not None:
            # optim.clip_by_global_norm / clip_grad_norm_: multiply by min(1, max / (norm + 1e-6)).
            factor = torch.clamp(clip_norm / (grad_norm + 1e-6), max=1.0)
            leaves, spec = _flat.flatten(grads)
            # Eagerly one foreach kernel (in place on the step's own gradients), else per leaf.
            grads = _flat.unflatten(spec, optim_ops.mul(leaves, factor, optim_ops.use_foreach(leaves), inplace=owned))
        metrics = {"loss": losses.mean(), "grad_norm": grad_norm}
        # Skip (GradScaler's, and without a loss scale too): a step whose loss or
        # unscaled gradients are not finite keeps params and optimizer state, so a bad batch
        # never turns the parameters into NaN silently; metrics["nonfinite"] flags it.
        finite = grads_ok & torch.isfinite(metrics["loss"])
        # Eager on the CPU reading the flag costs nothing, while torch.where over params and
        # optimizer state is three passes over memory the size of the model, every step.
        on_host = _readable_on_host(finite)
        ok = bool(finite) if on_host else None
        if on_host and donate:
            # The caller gave up ts: the optimizer writes into its buffers, or nothing happens.
            params, opt_state = ts.params, ts.opt_state
            done = in_place(grads, ts.opt_state, ts.params) if ok and in_place is not None else None
            if done is not None:
                params, opt_state = done
            elif ok:
                updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params, **donate_kw)
                params = optim.apply_updates(ts.params, updates, donate_params=True)
        else:
            updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
            # The optimizer's fresh updates belong to this step alone: the new params may reuse them.
            params = optim.apply_updates(ts.params, updates, donate_updates=fresh_updates)
        if accs is not None:
            metrics["accuracy"] = accs.mean()
        if lr is not None:
            rate = lr(ts.step) if callable(lr) else lr
            metrics["lr"] = torch.as_tensor(rate, dtype=torch.float32, device=grad_norm.device)
        if on_host:
            keep = lambda new, old: new if ok else old  # noqa: E731
        else:
            keep = functools.partial(_where, finite)
        # Without a scale a non-finite step means bad data or divergence: keep the batch-norm
        # statistics too (with a scale, overflow is routine and they update).
        keep_state = not scaling
        if not (on_host and donate):   # there the branch above already kept or updated both
            # One selection over all the trees: each tree walk costs Dynamo ~0.1 s to trace.
            if keep_state:
                params, opt_state, state = keep((params, opt_state, state), (ts.params, ts.opt_state, ts.state))
            else:
                params, opt_state = keep((params, opt_state), (ts.params, ts.opt_state))
        elif keep_state:
            state = keep(state, ts.state)
        if donate and torch.compiler.is_compiling():
            # The kept values go into the donated buffers: Inductor fuses each copy into the
            # kernel that computes it. (Eager on a device the donation is simply not used:
            # fresh memory is cheap in the caching allocator and a copy would cost a pass.)
            params, opt_state = _write_into(ts.params, params), _write_into(ts.opt_state, opt_state)
        metrics["nonfinite"] = ~finite
        if scaling:
            metrics["loss_scale"] = scaler.loss_scale
            metrics["grads_finite"] = grads_ok
            scaler = scaler.adjust(grads_ok)
        return TrainState(params, state, opt_state, ts.step + 1, scaler if scaling else None), metrics

    def step(ts: TrainState, batch: tuple[Any, Any], key: Key | None):
        scaler = ts.loss_scale if ts.loss_scale is not None else NoOpLossScale()
        return update(ts, *gradients(ts, batch, key, scaler))

    return step


def _check_unaliased(where: str, ts: TrainState, checked: list) -> None:
    """Donated leaves are written in place: two leaves overlapping in memory would be updated twice.

    Views of one buffer that do not overlap (``distributed.broadcast`` returns such) are fine.
    A strided leaf counts as its whole span, so interleaved strided views are refused too.
    ``checked`` holds the data pointers of the last state found clean: a donating step hands
    back the same tensors, so the spans are worked out only when they change (and leaf names
    only for the error).
    """
    both = {"params": ts.params, "opt_state": ts.opt_state}
    leaves = _flat.flatten(both)[0]
    tensors = [(i, x) for i, x in enumerate(leaves) if isinstance(x, torch.Tensor) and x.numel()]
    ptrs = tuple(x.data_ptr() for _, x in tensors)
    if checked and checked[0] == ptrs:
        return
    spans = []
    for i, x in tensors:
        extent = 1 + sum((n - 1) * abs(st) for n, st in zip(x.shape, x.stride(), strict=True))
        spans.append((x.data_ptr(), x.data_ptr() + extent * x.element_size(), i))
    spans.sort()
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:], strict=False):
        if begin < end:
            names = _flat.paths(both)
            raise ValueError(f"{where}: the leaves {names[first]!r} and {names[second]!r} of the train state overlap "
                             f"in memory, so updating them in place would apply two updates to one tensor; give each "
                             f"leaf its own tensor (e.g. tree.map(torch.clone, train_state)) or use donate=False")
    checked[:] = [ptrs]


def _where(flag: Tensor, new: PyTree, old: PyTree) -> PyTree:
    """``torch.where(flag, new, old)`` leaf-wise (non-tensor leaves from ``new``), two trees of
    one structure: no Python call per leaf, each of which costs Dynamo ~2 ms of tracing."""
    (news, olds), spec = _flat.flatten_alike("deepfn.train", new, old)
    return _flat.unflatten(spec, [torch.where(flag, n, o) if isinstance(n, torch.Tensor) else n
                                  for n, o in zip(news, olds, strict=True)])


def _write_into(old: PyTree, new: PyTree) -> PyTree:
    """``new``'s values written into ``old``'s tensors (compiled code only); the tree like ``new``."""
    (olds, news), spec = _flat.flatten_alike("deepfn.train", old, new)
    return _flat.unflatten(spec, [o.copy_(n) if isinstance(o, torch.Tensor) and o is not n else n
                                  for o, n in zip(olds, news, strict=True)])


def _unscale_and_check(scaler: Any, grads: PyTree, owned: bool) -> tuple[PyTree, Tensor]:
    """``(grads / loss_scale, all finite?)``: the unscaled gradients and a 0-d bool tensor.

    Eagerly, on plain tensors the step owns, this is ``GradScaler``'s own fused kernel
    (``_amp_foreach_non_finite_check_and_unscale_``): one in-place pass over the gradients,
    where ``isfinite(g).all()`` per leaf costs several passes and allocations (3.5 ms against
    0.12 ms on 1.9M fp32 gradients here). Compiled or under ``vmap``: ``unscale`` then
    ``all_finite``, which the compiler fuses. The values are the same either way.
    """
    eager = owned and not torch.compiler.is_compiling()   # compiling: not even the leaves (tracing time)
    if eager:
        floats = [g for g in tree.leaves(grads) if isinstance(g, torch.Tensor) and g.is_floating_point()]
        eager = plain_eager(floats) and len({g.device for g in floats}) == 1
    if not eager:
        grads = scaler.unscale(grads)
        return grads, all_finite(grads)
    device = floats[0].device
    found = torch.zeros(1, dtype=torch.float32, device=device)
    inv = (torch.ones(1, dtype=torch.float32, device=device) if isinstance(scaler, NoOpLossScale)
           else scaler.inverse_scale().reshape(1))
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for g in floats:
        by_dtype.setdefault(g.dtype, []).append(g)
    for group in by_dtype.values():
        torch._amp_foreach_non_finite_check_and_unscale_(group, found, inv)
    return grads, found[0] == 0


def _finite_given_norm(norm: Tensor, grads: PyTree) -> Tensor:
    """All of ``grads`` finite (a 0-d bool tensor), given their global norm, read on the host.

    An inf or NaN leaf makes the norm inf or NaN, so a finite norm settles it without another
    pass over the gradients (the fused check reads and writes them all: ~0.6 ms a step on a
    1.9M-parameter MLP here). A non-finite norm may still be an overflow of finite values
    (squares past float32's range), so then each leaf is checked.
    """
    ok = torch.isfinite(norm)
    return ok if bool(ok) else all_finite(grads)


def _readable_on_host(flag: Tensor) -> bool:
    """True when ``bool(flag)`` neither breaks a graph or a transform nor waits for a device."""
    return flag.device.type == "cpu" and plain_eager([flag])


def _check_batch(fn: str, batch: Any, k: int) -> None:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError(f"{fn}: batch must be a pair (inputs, labels); got {type(batch).__name__}")
    sizes = {x.shape[0] for x in tree.leaves(batch) if isinstance(x, torch.Tensor) and x.ndim > 0}
    if len(sizes) != 1:
        shapes = [describe(x) for x in tree.leaves(batch)]
        raise ValueError(f"{fn}: every batch tensor needs the same leading (batch) size; got {shapes}")
    (size,) = sizes
    if size % k:
        raise ValueError(f"{fn}: batch size must be divisible by accumulation_steps={k}; got {size}")


def make_train_step(model: Block, loss_fn: Callable[[Tensor, Any], Tensor], optimizer: Any, *,
                    policy: Policy | None = None, loss_scale: Any = None, accumulation_steps: int = 1,
                    clip_norm: float | None = None, all_reduce: Callable[[PyTree], PyTree] | None = None,
                    compile: bool | str = True, lr: Any = None, ignore_index: int | None = None,
                    donate: bool = False, compile_cache: str | os.PathLike | None = None
                    ) -> Callable[[TrainState, tuple[Any, Any], Key | None], tuple[TrainState, dict[str, Tensor]]]:
    """Build ``step(train_state, (inputs, labels), key) -> (train_state, metrics)``: one update.

    Args:
        model: a block; ``model.apply(params, state, *inputs, key=key, train=True)`` gives logits.
            ``inputs`` is a tensor or a tuple of tensors (e.g. ``(src, tgt)``).
        loss_fn: ``loss_fn(logits, labels) -> scalar`` with mean reduction (``losses.cross_entropy``).
        optimizer: a ``GradientTransformation`` (``init``, ``update``) from ``deepfn.optim``.
        policy: an ``amp.Policy``: params and floating inputs are cast to ``compute_dtype`` inside
            the differentiated function, logits to ``output_dtype``; the loss is taken in float32
            and gradients arrive in the params' (``param_dtype``) dtype.
        loss_scale: an ``amp.DynamicLossScale`` used when the train state carries none
            (``TrainState.loss_scale`` takes precedence). With a loss scale the loss is scaled,
            gradients unscaled, a step with non-finite gradients is skipped (``torch.where``) and
            the scale adjusted, like ``GradScaler``.
        accumulation_steps: ``k`` splits the batch (leading axis) into ``k`` equal micro-batches
            inside the step; the update equals the whole batch's (without batch norm or dropout;
            dropout keys are ``random.fold_in(key, i)`` per micro-batch, batch-norm state threads
            through the micro-batches in order).
        clip_norm: clip the unscaled gradient's global norm, as ``optim.clip_by_global_norm``.
        all_reduce: a function over the gradient tree (``distributed.all_reduce_mean``), called
            once per update before unscaling. ``distributed.all_reduce_mean`` itself, in an
            eager step with more than one rank, runs during the last backward pass instead
            (:func:`deepfn.distributed.grad_and_all_reduce_mean`: each bucket is all-reduced as
            soon as its gradients exist, as DDP does); the result is the same.
        compile: ``True`` (or ``"whole"``): the whole step is one ``torch.compile(fullgraph=True)``
            graph (forward, the ``grad`` transform, clipping, the finite check, the optimizer).
            ``"split"``: ``torch.compile(nn.Module)`` + ``torch.optim``'s way: the forward pass is
            compiled and AOTAutograd derives its backward graph (the gradient is taken with
            ``torch.autograd`` on the compiled forward), and the rest of the step (unscaling,
            clipping, the optimizer) runs eagerly with foreach kernels. ``False``: eager.
            The numbers are the same up to float rounding in every mode. The whole graph has the
            least per-call overhead (small models); the split one compiles in about half the
            time (Inductor's C++ for the optimizer over every parameter is as much code as the
            model's), runs the CNNs here as fast as ``torch.compile(nn.Module)``, and is the only
            compiled mode where ``remat`` regions are recomputed rather than left to the compiler.
        lr: the optimizer's learning rate (a float or a schedule ``step -> lr``), only to
            report ``metrics["lr"]`` (``lr(train_state.step)``); optimizer states hold no rate.
        ignore_index: labels with this value (padding) are left out of ``metrics["accuracy"]``,
            as ``cross_entropy(..., ignore_index=...)`` leaves them out of the loss.
        donate: the caller gives up each ``train_state`` it passes in (JAX's buffer donation):
            the step writes the new params and optimizer state into that state's tensors
            (eager on the CPU, foreach ops in place, as ``torch.optim`` does; compiled, ``copy_``
            that Inductor fuses into the update; eager on an accelerator the donation is not
            used, as reading the finite flag there would sync) instead of fresh memory: the
            same numbers, less memory traffic (the AdamW update alone, on this CPU: 1.2x ->
            0.9x ``torch.optim``'s step eagerly, 1.7x -> 0.4-1.0x compiled). ``adamw`` eagerly
            on the CPU writes the parameters in ``torch.optim.AdamW``'s order (decay, then one
            ``addcdiv_``: two passes where the pure update and its addition take four), equal
            to the pure step up to float rounding; every other donated step is bit for bit the
            pure one. Read only the returned state afterwards; to keep an old one,
            ``tree.map(torch.clone, ...)`` it first (``fit`` does so for its best state). Under
            ``vmap`` the donation is ignored.
        compile_cache: a directory: the compiled step (with ``compile="split"``, its compiled
            forward and backward) is saved there, one file per input signature, and a later
            process with the same model, optimizer, settings, sources and versions loads it
            instead of tracing the step again (the 3+3-layer Transformer's first call on a
            2-core CPU: 1.2 s instead of 12.2 s, with Inductor's on-disk cache warm in both).
            Stale or unreadable files are compiled again and replaced; see
            :mod:`deepfn.train.compile_cache` for what is checked.

    Returns:
        The step. ``metrics`` maps ``loss`` (mean, float32), ``grad_norm`` (before clipping),
        ``accuracy`` (integer labels of the logits' leading shape), ``lr`` (when ``lr`` is given)
        ``nonfinite`` (bool: the loss or the gradients were not finite and the update was
        skipped) and, with loss scaling, ``loss_scale`` and ``grads_finite`` to 0-d tensors.
        The input ``train_state`` is never mutated (unless donated); ``step`` grows by one,
        skipped or not. The step has an attribute ``donates`` (bool).

    Non-finite steps: with or without a loss scale, a step whose loss or unscaled gradients
    hold inf/NaN leaves ``params`` and ``opt_state`` unchanged (a branch-free ``torch.where``
    when compiled, vmapped or on an accelerator, so no host sync; eagerly on the CPU a plain
    branch on the flag) and sets ``metrics["nonfinite"]``; without a loss scale the model state
    (batch-norm statistics) is kept too. Nothing is raised: check the flag (``fit`` averages it
    into the fraction of skipped steps) to stop a diverged run.

    Bad input: shapes that do not fit the model, or token ids outside its vocabulary, raise the
    model's own ``ValueError`` / ``TypeError``, compiled or not (a step that fails re-runs the
    model's forward eagerly, outside the transforms, to surface the model's message).
    """
    fn = "deepfn.train.make_train_step"
    if isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, int) or accumulation_steps < 1:
        raise ValueError(f"{fn}: accumulation_steps must be a positive int; got {accumulation_steps!r}")
    if clip_norm is not None and not (isinstance(clip_norm, (int, float)) and clip_norm > 0):
        raise ValueError(f"{fn}: clip_norm must be None or a positive float; got {clip_norm!r}")
    if policy is not None and not isinstance(policy, Policy):
        raise TypeError(f"{fn}: policy must be None or an amp.Policy; got {type(policy).__name__}")
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"{fn}: optimizer must be a GradientTransformation (init, update); "
                        f"got {type(optimizer).__name__}")
    if compile not in (True, False, "whole", "split"):
        raise ValueError(f"{fn}: compile must be True/'whole' (one graph), 'split' (forward+backward and the "
                         f"update compiled apart) or False; got {compile!r}")
    require_compiled(fn, compile_cache, compile, "compile=True, 'whole' or 'split'")
    split = compile == "split"
    pure = build_train_step(model, loss_fn, optimizer, policy=policy, accumulation_steps=accumulation_steps,
                            clip_norm=clip_norm, all_reduce=all_reduce, lr=lr, ignore_index=ignore_index,
                            donate=donate, split_compile=split, compile_cache=compile_cache if split else None)
    run = compiled(pure, compile_cache, f"{fn}: step") if compile and not split else pure
    compile = bool(compile)

    def diagnose(ts: TrainState, batch: tuple[Any, Any], key: Key | None) -> None:
        _forward(model, policy, ts.params, ts.state, _micro(batch[0], accumulation_steps, 0), key, True)

    checked: list = []   # the last donated state found free of overlapping leaves
    returned: list = []   # a weak reference to the state the last donated step returned

    def step(train_state: TrainState, batch: tuple[Any, Any], key: Key | None):
        if not isinstance(train_state, TrainState):
            raise TypeError(f"{fn}: step needs a TrainState; got {type(train_state).__name__}")
        _check_batch(f"{fn}: step", batch, accumulation_steps)
        if train_state.loss_scale is None and loss_scale is not None:
            train_state = train_state.replace(loss_scale=loss_scale)
        # The state this step just returned holds the buffers it checked (and fresh ones): no
        # walk over every leaf again (~1 ms a step on cnn-small).
        if donate and not (returned and returned[0]() is train_state):
            _check_unaliased(f"{fn}: step (donate=True)", train_state, checked)
        out = _surface_model_errors(run, diagnose, compile, train_state, tuple(batch), key)
        if donate:
            returned[:] = [weakref.ref(out[0])]
        return out

    step.donates = bool(donate)
    return step


def _surface_model_errors(run: Callable, diagnose: Callable, compiled: bool, *args: Any) -> Any:
    """Call ``run``; when it fails, run the model's forward eagerly and outside ``torch.func``
    (``diagnose``) so that the model's own ``ValueError`` / ``TypeError`` surfaces.

    Why: Dynamo cannot build a block's message inside the graph, and value checks (token ids
    within the vocabulary) are skipped under transforms, where a bad id only gives an
    ``IndexError``. The diagnosis costs one forward, only on failure; an error it does not
    explain (a compiler bug) is re-raised as it came.
    """
    try:
        return run(*args)
    except Exception as error:
        if not compiled and isinstance(error, (ValueError, TypeError)):
            raise
        try:
            diagnose(*args)
        except (ValueError, TypeError) as clear:
            raise clear from error
        raise


def make_eval_step(model: Block, loss_fn: Callable[[Tensor, Any], Tensor], *, policy: Policy | None = None,
                   compile: bool = True, ignore_index: int | None = None,
                   compile_cache: str | os.PathLike | None = None
                   ) -> Callable[[Params, State, tuple[Any, Any]], dict[str, Tensor]]:
    """Build ``eval_step(params, state, (inputs, labels)) -> metrics`` (``train=False``).

    ``metrics`` holds ``loss`` (float32) and, for integer labels, ``accuracy`` (labels equal to
    ``ignore_index`` left out, as in :func:`make_train_step`); 0-d tensors. ``compile_cache``:
    a directory where the compiled step is saved and later loaded, as in :func:`make_train_step`.
    """
    require_compiled("deepfn.train.make_eval_step", compile_cache, compile)

    def evaluate(params: Params, state: State, batch: tuple[Any, Any]) -> dict[str, Tensor]:
        inputs, labels = batch
        logits, _ = _forward(model, policy, params, state, inputs, None, False)
        metrics = {"loss": loss_fn(logits, labels).float()}
        acc = _accuracy(logits, labels, ignore_index)
        if acc is not None:
            metrics["accuracy"] = acc
        return metrics

    run = compiled(evaluate, compile_cache, "deepfn.train.make_eval_step: eval_step", training=False) if compile \
        else evaluate

    def eval_step(params: Params, state: State, batch: tuple[Any, Any]) -> dict[str, Tensor]:
        _check_batch("deepfn.train.make_eval_step: eval_step", batch, 1)
        return _surface_model_errors(run, lambda p, s, b: _forward(model, policy, p, s, b[0], None, False),
                                     compile, params, state, tuple(batch))

    return eval_step

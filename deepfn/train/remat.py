"""Rematerialisation (gradient checkpointing) that works under ``torch.func`` transforms.

Twin: ``torch.utils.checkpoint.checkpoint(fn, ..., use_reentrant=False)``, which raises under
``torch.func.grad`` in torch 2.14 because it relies on saved-tensor hooks (pytorch#122729).
Here a ``torch.autograd.Function`` saves only its inputs and its ``backward`` recomputes
``fn`` through ``torch.func.vjp``; ``generate_vmap_rule`` lets ``vmap`` batch it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.utils.checkpoint

from .._torch import pytree

__all__ = ["remat", "differentiated_outside"]

# True only while a compiled function runs whose gradient torch.autograd takes from outside
# (make_train_step(compile="split")); read by Dynamo when it traces, which guards on it.
_OUTSIDE = {"active": False}


@contextlib.contextmanager
def differentiated_outside() -> Iterator[None]:
    """Within: ``torch.compile`` traces remat regions as ``torch.utils.checkpoint`` regions.

    For a compiled function that ``torch.autograd`` differentiates from outside (AOTAutograd
    derives its backward graph), as ``make_train_step(compile="split")`` does: there the
    checkpoint is tagged in the graph and the partitioner recomputes the region in the
    backward graph instead of saving its activations. Not valid when the compiled function
    runs ``torch.func.grad`` itself (torch 2.14: "don't yet support saved tensor hooks").
    Results are the same either way; only what the backward pass keeps changes.

    The setting is process-wide (Dynamo guards on a module global), not per thread: do not
    trace a ``compile=True`` step in one thread while another is inside this context.
    """
    before = _OUTSIDE["active"]
    _OUTSIDE["active"] = True
    try:
        yield
    finally:
        _OUTSIDE["active"] = before


class _Recompute(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(*args: Any):
        # Dynamo inlines a forward whose inputs need no grad as an old-style forward and
        # passes a ctx first when the signature has varargs: drop it.
        if isinstance(args[0], torch.autograd.function.FunctionCtx):
            args = args[1:]
        flat_fn, *leaves = args
        return flat_fn(*leaves)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        flat_fn, *leaves = inputs
        ctx.flat_fn = flat_fn
        ctx.diff_in = tuple(_is_float(x) for x in leaves)
        # Integer/bool outputs (step counters) are auxiliary: no cotangent, and vjp refuses
        # them, so backward recomputes and differentiates only the floating ones.
        ctx.diff_out = tuple(i for i, o in enumerate(output) if _is_float(o))
        aux = [o for o in output if isinstance(o, torch.Tensor) and not _is_float(o)]
        if aux:
            ctx.mark_non_differentiable(*aux)
        # Only the inputs are kept: every intermediate of fn is recomputed in backward.
        ctx.save_for_backward(*leaves)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: torch.Tensor):
        leaves, diff_in, picked = ctx.saved_tensors, ctx.diff_in, ctx.diff_out

        def diff_fn(*floats: torch.Tensor) -> tuple[torch.Tensor, ...]:
            it = iter(floats)
            outs = ctx.flat_fn(*[next(it) if d else x for x, d in zip(leaves, diff_in, strict=True)])
            return tuple(outs[i] for i in picked)

        with torch.enable_grad():
            outputs, vjp_fn = torch.func.vjp(diff_fn, *[x for x, d in zip(leaves, diff_in, strict=True) if d])
        # Outputs the loss never reached (e.g. new batch-norm statistics) get zero cotangents.
        cotangents = tuple(torch.zeros_like(o) if grad_outputs[i] is None else grad_outputs[i]
                           for o, i in zip(outputs, picked, strict=True))
        grads = iter(vjp_fn(cotangents))
        return (None, *[next(grads) if d else None for d in diff_in])


def _is_float(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and (x.is_floating_point() or x.is_complex())


def remat(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``fn(params, *inputs)`` so its backward pass recomputes its activations.

    Values and gradients equal ``fn``'s under ``torch.func.grad``, ``vmap(grad(...))`` and
    ``torch.compile``; the backward pass keeps only ``fn``'s floating tensor inputs alive
    instead of every intermediate, trading one extra forward for memory.

    ``params`` and ``inputs`` are pytrees; floating tensor leaves are differentiable, other
    leaves (ints, bool masks, keys, Python values) pass through as constants. ``fn`` returns
    a tensor or a tuple/list/dict tree of tensors; its non-floating tensor outputs (e.g. a
    batch norm's ``num_batches_tracked`` in a returned ``(y, new_state)``) are auxiliary
    outputs, not differentiated, and floating outputs the loss does not use (new running
    statistics) get zero cotangents, so ``fn`` may be a whole ``apply`` returning state.

    A remat inside another remat's ``fn`` is not supported (torch 2.14's functorch levels
    escape when a custom backward recomputes another custom function).

    Under ``torch.compile``: where ``torch.autograd`` differentiates the compiled function from
    outside (inside :func:`differentiated_outside`, as in ``make_train_step(compile="split")``),
    ``fn`` runs as a ``torch.utils.checkpoint`` region, which AOTAutograd's partitioner
    recomputes in the backward graph: the same memory saving as eagerly. In a graph that takes
    the gradient itself (``torch.compile(torch.func.grad(...))``, ``compile=True``) ``fn`` is
    traced as is and the compiler decides what to keep: Dynamo in torch 2.14 can trace neither
    this Function inside ``torch.func.grad`` once its inputs are intermediates (an assertion on
    un-faked ``GradTrackingTensor`` inputs) nor a checkpoint there (saved-tensor hooks); values
    and gradients are the same either way.

    Examples:
        >>> import torch, deepfn
        >>> f = deepfn.remat(lambda p, x: torch.tanh(x @ p["w"]).sum())
        >>> g = torch.func.grad(f)({"w": torch.ones(3, 2)}, torch.ones(4, 3))
        >>> g["w"].shape
        torch.Size([3, 2])
    """
    @functools.wraps(fn)
    def wrapped(params: Any, *inputs: Any) -> Any:
        if torch.compiler.is_compiling():   # see the docstring
            if _OUTSIDE["active"]:
                return torch.utils.checkpoint.checkpoint(fn, params, *inputs, use_reentrant=False)
            return fn(params, *inputs)
        leaves, in_spec = pytree.tree_flatten((params, inputs))
        # Every tensor leaf enters the Function (integer keys and bool masks too): a tensor
        # captured by closure instead trips functorch's level checks under vmap(grad(...)).
        is_tensor = [isinstance(x, torch.Tensor) for x in leaves]
        tensors = [x for x, t in zip(leaves, is_tensor, strict=True) if t]
        others = [x for x, t in zip(leaves, is_tensor, strict=True) if not t]
        out_spec: list[Any] = []

        def flat_fn(*tensor_leaves: torch.Tensor) -> tuple[torch.Tensor, ...]:
            it_t, it_o = iter(tensor_leaves), iter(others)
            full = [next(it_t) if t else next(it_o) for t in is_tensor]
            p, xs = pytree.tree_unflatten(full, in_spec)
            out_leaves, spec = pytree.tree_flatten(fn(p, *xs))
            if not out_spec:
                out_spec.append(spec)
            return tuple(out_leaves)

        outputs = _Recompute.apply(flat_fn, *tensors)
        return pytree.tree_unflatten(list(outputs), out_spec[0])

    return wrapped

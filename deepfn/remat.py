"""Rematerialisation (gradient checkpointing) that works under ``torch.func`` transforms.

Twin: ``torch.utils.checkpoint.checkpoint(fn, ..., use_reentrant=False)``, which raises under
``torch.func.grad`` in torch 2.14 because it relies on saved-tensor hooks (pytorch#122729).
Here a ``torch.autograd.Function`` saves only its inputs and its ``backward`` recomputes
``fn`` through ``torch.func.vjp``; ``generate_vmap_rule`` lets ``vmap`` batch it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.utils._pytree as pytree

__all__ = ["remat"]


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
        # Only the inputs are kept: every intermediate of fn is recomputed in backward.
        ctx.save_for_backward(*leaves)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: torch.Tensor):
        leaves = ctx.saved_tensors
        with torch.enable_grad():
            outputs, vjp_fn = torch.func.vjp(ctx.flat_fn, *leaves)
        cotangents = tuple(torch.zeros_like(o) if g is None else g for o, g in zip(outputs, grad_outputs, strict=True))
        return (None, *vjp_fn(cotangents))


def remat(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``fn(params, *inputs)`` so its backward pass recomputes its activations.

    Values and gradients equal ``fn``'s under ``torch.func.grad``, ``vmap(grad(...))`` and
    ``torch.compile``; the backward pass keeps only ``fn``'s floating tensor inputs alive
    instead of every intermediate, trading one extra forward for memory.

    ``params`` and ``inputs`` are pytrees; floating tensor leaves are differentiable, other
    leaves (ints, bool masks, keys, Python values) pass through as constants. ``fn`` returns
    a tensor or a tuple/list/dict tree of tensors.

    A remat inside another remat's ``fn`` is not supported (torch 2.14's functorch levels
    escape when a custom backward recomputes another custom function).

    Under ``torch.compile``, AOTAutograd's partitioner already decides what to recompute
    (``torch._functorch.config.activation_memory_budget``); measure before relying on savings.

    Example:
        >>> import torch, deepfn
        >>> f = deepfn.remat(lambda p, x: torch.tanh(x @ p["w"]).sum())
        >>> g = torch.func.grad(f)({"w": torch.ones(3, 2)}, torch.ones(4, 3))
        >>> g["w"].shape
        torch.Size([3, 2])
    """
    @functools.wraps(fn)
    def wrapped(params: Any, *inputs: Any) -> Any:
        leaves, in_spec = pytree.tree_flatten((params, inputs))
        is_diff = [isinstance(x, torch.Tensor) and x.is_floating_point() for x in leaves]
        diff = [x for x, d in zip(leaves, is_diff, strict=True) if d]
        const = [x for x, d in zip(leaves, is_diff, strict=True) if not d]
        out_spec: list[Any] = []

        def flat_fn(*diff_leaves: torch.Tensor) -> tuple[torch.Tensor, ...]:
            it_d, it_c = iter(diff_leaves), iter(const)
            full = [next(it_d) if d else next(it_c) for d in is_diff]
            p, xs = pytree.tree_unflatten(full, in_spec)
            out_leaves, spec = pytree.tree_flatten(fn(p, *xs))
            if not out_spec:
                out_spec.append(spec)
            return tuple(out_leaves)

        outputs = _Recompute.apply(flat_fn, *diff)
        return pytree.tree_unflatten(list(outputs), out_spec[0])

    return wrapped

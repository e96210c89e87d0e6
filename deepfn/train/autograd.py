"""Gradients of eager code on plain tensors through ``torch.autograd``, for eager train steps.

Why: ``torch.func.grad`` wraps every tensor in its transform's dynamic layer, and that
dispatch costs time on each op of an eager step and memory for every saved tensor (figures
in the documentation's benchmarks page). Eagerly, on plain tensors, the
same gradients come from ``torch.autograd.grad`` on detached aliases of the parameters: the
same backward formulas, no dynamic layer. Nothing outside is read or written (the aliases
share memory but are never modified), so the step stays pure. Compiled steps and steps
under ``vmap`` keep ``torch.func``, which they need. ``distributed.grad_and_all_reduce_mean``
builds its hooked backward on the same aliases.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import tree
from ..tree import flat as _flat
from ..typing import PyTree

__all__ = ["autograd_grad_and_value", "detached_aliases", "detach_tree"]


def detached_aliases(leaves: list[Any]) -> tuple[list[Any], list[int]]:
    """``leaves`` with each floating tensor replaced by a detached alias that requires grad, and
    the indices of those leaves. The aliases share memory with the leaves, which are never
    modified and never made to require grad."""
    diff = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor) and x.is_floating_point()]
    inputs = list(leaves)
    for i in diff:
        inputs[i] = leaves[i].detach().requires_grad_()
    return inputs, diff


def detach_tree(x: Any) -> Any:
    """Every tensor leaf of ``x`` detached (an aux output leaves the autograd graph with it)."""
    return tree.map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, x)


def autograd_grad_and_value(objective: Callable[..., tuple[torch.Tensor, Any]], params: PyTree,
                            *args: Any) -> tuple[PyTree, tuple[torch.Tensor, Any]]:
    """``torch.func.grad_and_value(objective, has_aux=True)(params, *args)`` by ``torch.autograd``.

    Args:
        objective: ``objective(params, *args) -> (scalar, aux)``.
        params: the tree differentiated; its floating leaves are the inputs.

    Returns:
        ``(grads, (value, aux))``, all detached: ``grads`` like ``params`` (zeros where the
        scalar does not depend on a leaf, as ``torch.func.grad`` gives; non-floating leaves
        as they came).
    """
    # deepfn's own flatten: the same leaves in the same order as torch.utils._pytree, without a
    # TreeSpec object per node (~0.5 ms a step on cnn-small's nested parameter dicts).
    leaves, spec = _flat.flatten(params)
    inputs, diff = detached_aliases(leaves)
    with torch.enable_grad():
        value, aux = objective(_flat.unflatten(spec, inputs), *args)
        produced = torch.autograd.grad(value, [inputs[i] for i in diff], allow_unused=True) if diff else ()
    grads = list(leaves)
    for i, g in zip(diff, produced, strict=True):
        grads[i] = torch.zeros_like(leaves[i]) if g is None else g
    return _flat.unflatten(spec, grads), (value.detach(), detach_tree(aux))

"""Three engines for one micro-batch's ``torch.func.grad_and_value(objective, has_aux=True)``,
added to the gradients of the micro-batches before it.

The reference is ``torch.func.grad_and_value`` over the parameter tree. Each engine returns
the same gradients up to float rounding (the suite's compiled = eager tests are the net):

- ``FUNCTORCH``: ``torch.func`` over the flat list of parameters. Used when compiling and under
  ``vmap`` (which need ``torch.func``). Why flat: functorch flattens its argument with torch's
  pytree, whose spec per dict node costs Dynamo ~5 ms of tracing each (hundreds per model);
  one list node does not.
- ``AUTOGRAD``: :func:`deepfn.train.autograd.autograd_grad_and_value`, ``torch.autograd.grad`` on
  detached aliases of the parameters. Used eagerly on plain tensors: the same backward
  formulas without functorch's dynamic layer, which costs on every op of an eager step.
- ``OVERLAP``: :func:`deepfn.distributed.grad_and_all_reduce_mean` for the last micro-batch,
  when the step's ``all_reduce`` is ``distributed.all_reduce_mean`` itself, eagerly, with
  peers: each bucket is all-reduced during backward (DDP's overlap) instead of after it. It
  replaces that micro-batch's gradient, the division by ``k`` and the ``all_reduce`` with the
  same operations in the same order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import distributed, tree
from .._torch import plain_eager
from ..tree import flat as _flat
from ..typing import PyTree
from .autograd import autograd_grad_and_value

__all__ = ["FUNCTORCH", "AUTOGRAD", "OVERLAP", "choose_engine", "functorch_grad_and_value",
           "accumulate_micro_batch"]

FUNCTORCH, AUTOGRAD, OVERLAP = "functorch", "autograd", "overlap"


def choose_engine(params: PyTree, all_reduce: Callable | None) -> str:
    """The engine for a step on ``params``: ``OVERLAP``/``AUTOGRAD`` eagerly on plain tensors,
    else ``FUNCTORCH``."""
    # While compiling, not even the leaves: a tree walk costs Dynamo ~0.1 s to trace.
    if torch.compiler.is_compiling():
        return FUNCTORCH
    if not plain_eager(x for x in tree.leaves(params) if isinstance(x, torch.Tensor)):
        return FUNCTORCH
    if all_reduce is distributed.all_reduce_mean and distributed.world_size() > 1:
        return OVERLAP
    return AUTOGRAD


def functorch_grad_and_value(objective: Callable[..., tuple[torch.Tensor, Any]], params: PyTree,
                             *args: Any) -> tuple[PyTree, tuple[torch.Tensor, Any]]:
    """``torch.func.grad_and_value(objective, has_aux=True)(params, *args)``, differentiated
    over the flat list of ``params``' leaves; ``grads`` come back as a tree like ``params``."""
    flat, spec = _flat.flatten(params)

    def on_flat(flat_params, *rest):
        return objective(_flat.unflatten(spec, flat_params), *rest)
    g, out = torch.func.grad_and_value(on_flat, has_aux=True)(flat, *args)
    return _flat.unflatten(spec, g), out


def accumulate_micro_batch(engine: str, objective: Callable, eager_objective: Callable, params: PyTree,
                           args: tuple, summed: PyTree | None, *, last: bool, k: int
                           ) -> tuple[PyTree, tuple[torch.Tensor, Any]]:
    """``(summed + grad, (value, aux))`` of one micro-batch by ``engine``.

    ``objective`` is what ``FUNCTORCH`` differentiates, ``eager_objective`` what the eager engines
    do (the same function, or its split-compiled form). With ``OVERLAP`` the last micro-batch
    returns the all-reduced mean ``(summed + grad) / k`` instead (see the module docstring).
    """
    if engine == OVERLAP and last:
        return distributed.grad_and_all_reduce_mean(eager_objective, params, *args, accumulated=summed,
                                                    divide_by=k)
    if engine == FUNCTORCH:
        g, out = functorch_grad_and_value(objective, params, *args)
    else:
        g, out = autograd_grad_and_value(eager_objective, params, *args)
    return (g if summed is None else tree.map(torch.add, summed, g)), out

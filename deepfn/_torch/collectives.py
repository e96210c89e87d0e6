"""The all-gather that ``torch.compile`` traces into a graph: compiled ZeRO-3 steps gather one
unit at a time inside their forward and backward graphs (torchtitan's SimpleFSDP).

``torch.ops._c10d_functional.all_gather_into_tensor`` (with ``wait_tensor``) is the functional
collective Dynamo and Inductor trace; its registered autograd formula is a reduce-scatter of
the sum, so the backward graph reduce-scatters each unit's gradient where it is complete.
torch 2.14 has no public name for it (``torch.distributed``'s own collectives write into
their arguments and are not traced). Public fallback when the hook is off:
:func:`traceable_all_gather` gives None, and compiled ZeRO-3 steps gather every parameter
eagerly before their graph (the same numbers, more memory).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .gate import hook_on, turn_off

__all__ = ["traceable_all_gather"]


def traceable_all_gather() -> Callable[[torch.Tensor, int, str], torch.Tensor] | None:
    """``gather(local, n, group_name) -> [n * len(local)]``: every rank's 1-D ``local`` of the
    process group named ``group_name`` (of ``n`` ranks), concatenated in rank order; traceable
    by ``torch.compile``, differentiable (the gradient: this rank's part of the sum over ranks).
    None when the hook is off or the ops are missing."""
    if not hook_on("traceable_gather"):
        return None
    try:
        ops = torch.ops._c10d_functional
        gather_op, wait = ops.all_gather_into_tensor, ops.wait_tensor
    except Exception as error:   # a moved or renamed op namespace: gather eagerly from now on
        turn_off("traceable_gather", error)
        return None

    def gather(local: torch.Tensor, n: int, group_name: str) -> torch.Tensor:
        return wait(gather_op(local, n, group_name))
    return gather

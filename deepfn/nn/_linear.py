"""``F.linear`` whose compiled graphs keep the batch dimensions symbolic.

Under ``torch.func.grad`` (every compiled train step), torch 2.14 runs ``F.linear`` with a bias
through functorch's ``linear_hack``, which reads each size of the input as a plain integer:
Dynamo then pins every batch dimension (the sequence length too), so a step compiles again for
each new length instead of once with dynamic shapes (docs/benchmarks.md, "Compiled scripts by
default"). While compiling, the same product is spelled as ATen's own CPU path for a contiguous
input (the batch dimensions reshaped into rows, ``addmm``, reshaped back), which keeps them
symbolic; eager calls keep ``F.linear`` itself, bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["linear"]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: ``x [..., in]``, ``weight [out, in]``, ``bias [out]`` ->
    ``[..., out]`` in ``x``'s dtype."""
    if bias is None or x.dim() < 2 or not torch.compiler.is_compiling():
        return F.linear(x, weight, bias)
    rows = torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight.t())
    return rows.reshape(*x.shape[:-1], weight.shape[0])

"""The objective of ``make_train_step(compile="split")``: the forward pass compiled, its
backward derived by AOTAutograd (``torch.compile(nn.Module)``'s way).

What it replaces: the uncompiled objective under an eager gradient engine
(:mod:`deepfn.train.grad_engines`). Why it is equal: the compiled function computes the same
forward, and ``torch.autograd`` differentiates it through the backward graph AOTAutograd
derived from that forward; the rest of the step stays eager. Inside, ``remat`` regions
become checkpoint regions that the backward recomputes (:func:`deepfn.train.remat.differentiated_outside`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ..remat import differentiated_outside
from .dynamic import DynamicDims
from .one_graph import compiled

__all__ = ["split_compiled"]


def split_compiled(objective: Callable, compile_cache: str | os.PathLike | None, what: str,
                   dynamic: DynamicDims | None = None) -> Callable:
    """``objective`` compiled for eager differentiation (saved in ``compile_cache`` when given;
    ``what`` names it in messages; ``dynamic``: the batch dims compiled as symbols); same
    signature and values as ``objective``; ``compiled_programs()`` as :func:`compiled`'s."""
    compiled_objective = compiled(objective, compile_cache, what, dynamic=dynamic)

    def eager_objective(*args: Any) -> Any:
        with differentiated_outside():   # remat regions become checkpoint regions
            return compiled_objective(*args)
    eager_objective.compiled_programs = compiled_objective.compiled_programs
    return eager_objective

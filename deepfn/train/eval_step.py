"""The evaluation step: the model's forward pass (``train=False``), the loss and the accuracy."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ..amp import Policy
from ..typing import Block, Params, State, Tensor
from .compile import compiled, no_programs, require_compiled
from .compile.dynamic import DynamicDims, check_dynamic_dims
from .objective import accuracy, forward
from .step_checks import check_batch, surface_model_errors

__all__ = ["make_eval_step"]


def make_eval_step(model: Block, loss_fn: Callable[[Tensor, Any], Tensor], *, policy: Policy | None = None,
                   compile: bool = True, ignore_index: int | None = None,
                   compile_cache: str | os.PathLike | None = None,
                   dynamic_dims: int | tuple[int, ...] | None = None
                   ) -> Callable[[Params, State, tuple[Any, Any]], dict[str, Tensor]]:
    """Build ``eval_step(params, state, (inputs, labels)) -> metrics`` (``train=False``).

    ``metrics`` holds ``loss`` (float32) and, for integer labels, ``accuracy`` (labels equal to
    ``ignore_index`` left out, as in :func:`~deepfn.train.make_train_step`); 0-d tensors.
    ``compile_cache``: a directory where the compiled step is saved and later loaded, as in
    :func:`~deepfn.train.make_train_step`. ``dynamic_dims``: dims of every batch tensor whose
    sizes change from call to call, compiled once as symbols, as in
    :func:`~deepfn.train.make_train_step`. The step's attribute ``dynamic_dims`` holds them.
    """
    require_compiled("deepfn.train.make_eval_step", compile_cache, compile)
    dims = check_dynamic_dims("deepfn.train.make_eval_step", dynamic_dims)

    def evaluate(params: Params, state: State, batch: tuple[Any, Any]) -> dict[str, Tensor]:
        inputs, labels = batch
        logits, _ = forward(model, policy, params, state, inputs, None, False)
        metrics = {"loss": loss_fn(logits, labels).float()}
        acc = accuracy(logits, labels, ignore_index)
        if acc is not None:
            metrics["accuracy"] = acc
        return metrics

    # evaluate(params, state, batch): the batch is argument 2
    dynamic = DynamicDims((2,), dims) if dims else None
    run = compiled(evaluate, compile_cache, "deepfn.train.make_eval_step: eval_step", training=False,
                   dynamic=dynamic) if compile else evaluate

    def eval_step(params: Params, state: State, batch: tuple[Any, Any]) -> dict[str, Tensor]:
        check_batch("deepfn.train.make_eval_step: eval_step", batch, 1)
        return surface_model_errors(run, lambda p, s, b: forward(model, policy, p, s, b[0], None, False),
                                    compile, params, state, tuple(batch))

    eval_step.dynamic_dims = dims   # evaluate and fit count compile events with it
    eval_step.compiled_programs = getattr(run, "compiled_programs", no_programs)
    return eval_step

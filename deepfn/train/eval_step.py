"""The evaluation step: the model's forward pass (``train=False``), the loss and the accuracy."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ..amp import Policy
from ..typing import Block, Params, State, Tensor
from .compile import compiled, require_compiled
from .objective import accuracy, forward
from .step_checks import check_batch, surface_model_errors

__all__ = ["make_eval_step"]


def make_eval_step(model: Block, loss_fn: Callable[[Tensor, Any], Tensor], *, policy: Policy | None = None,
                   compile: bool = True, ignore_index: int | None = None,
                   compile_cache: str | os.PathLike | None = None
                   ) -> Callable[[Params, State, tuple[Any, Any]], dict[str, Tensor]]:
    """Build ``eval_step(params, state, (inputs, labels)) -> metrics`` (``train=False``).

    ``metrics`` holds ``loss`` (float32) and, for integer labels, ``accuracy`` (labels equal to
    ``ignore_index`` left out, as in :func:`~deepfn.train.make_train_step`); 0-d tensors.
    ``compile_cache``: a directory where the compiled step is saved and later loaded, as in
    :func:`~deepfn.train.make_train_step`.
    """
    require_compiled("deepfn.train.make_eval_step", compile_cache, compile)

    def evaluate(params: Params, state: State, batch: tuple[Any, Any]) -> dict[str, Tensor]:
        inputs, labels = batch
        logits, _ = forward(model, policy, params, state, inputs, None, False)
        metrics = {"loss": loss_fn(logits, labels).float()}
        acc = accuracy(logits, labels, ignore_index)
        if acc is not None:
            metrics["accuracy"] = acc
        return metrics

    run = compiled(evaluate, compile_cache, "deepfn.train.make_eval_step: eval_step", training=False) if compile \
        else evaluate

    def eval_step(params: Params, state: State, batch: tuple[Any, Any]) -> dict[str, Tensor]:
        check_batch("deepfn.train.make_eval_step: eval_step", batch, 1)
        return surface_model_errors(run, lambda p, s, b: forward(model, policy, p, s, b[0], None, False),
                                    compile, params, state, tuple(batch))

    return eval_step

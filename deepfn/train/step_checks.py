"""Checks of train and eval steps: their options, their batches, and the model's own error
message when a compiled or transformed step fails."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import tree
from .._checks import describe
from ..amp import Policy

__all__ = ["check_step_options", "check_batch", "surface_model_errors"]


def check_step_options(fn: str, optimizer: Any, policy: Any, accumulation_steps: Any, clip_norm: Any,
                       compile: Any) -> None:
    """Raise ``ValueError`` / ``TypeError`` naming the first bad option of ``make_train_step``."""
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


def check_batch(fn: str, batch: Any, k: int) -> None:
    """Raise ``ValueError`` unless ``batch`` is a pair whose tensors share a leading size divisible by ``k``."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError(f"{fn}: batch must be a pair (inputs, labels); got {type(batch).__name__}")
    sizes = {x.shape[0] for x in tree.leaves(batch) if isinstance(x, torch.Tensor) and x.ndim > 0}
    if len(sizes) != 1:
        shapes = [describe(x) for x in tree.leaves(batch)]
        raise ValueError(f"{fn}: every batch tensor needs the same leading (batch) size; got {shapes}")
    (size,) = sizes
    if size % k:
        raise ValueError(f"{fn}: batch size must be divisible by accumulation_steps={k}; got {size}")


def surface_model_errors(run: Callable, diagnose: Callable, compiled: bool, *args: Any) -> Any:
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

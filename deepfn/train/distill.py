"""Knowledge distillation as an ordinary train step: the teacher's logits are data.

The teacher runs once, in evaluation mode and without gradients (:func:`teacher_logits`);
its logits travel with each batch as part of the labels, ``(labels, teacher_logits)``, so
the student's step is :func:`~deepfn.train.make_train_step` with
:func:`distillation_loss` and the teacher's parameters are frozen by construction (they
are never inside the differentiated function). Twin: the usual PyTorch recipe of a
``torch.no_grad()`` teacher forward inside the student's loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import losses
from .._checks import describe
from ..typing import Block, Params, State, Tensor

__all__ = ["distillation_loss", "teacher_logits"]


def distillation_loss(temperature: float = 4.0, alpha: float = 0.5) -> Callable[[Tensor, Any], Tensor]:
    """``loss_fn(student_logits, (labels, teacher_logits)) -> scalar`` for ``make_train_step``.

    The loss is :func:`deepfn.losses.distillation` (Hinton's ``alpha * T**2 * KL + (1 - alpha)
    * CE``); use ``losses.cross_entropy`` with the plain labels to evaluate the student.

    Args:
        temperature: ``T > 0``, the softmax temperature of both models.
        alpha: weight of the soft (teacher) term, in ``[0, 1]``.

    Examples:
        >>> import torch
        >>> loss_fn = distillation_loss(temperature=2.0, alpha=1.0)
        >>> s = torch.zeros(2, 3)
        >>> float(loss_fn(s, (torch.tensor([0, 1]), s)))
        0.0
    """
    where = "deepfn.train.distillation_loss"
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"{where}: temperature must be a float > 0; got {temperature!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{where}: alpha must be a float in [0, 1]; got {alpha!r}")

    def loss_fn(student_logits: Tensor, targets: Any) -> Tensor:
        if not isinstance(targets, (tuple, list)) or len(targets) != 2:
            raise ValueError(f"{where}: the labels of a distillation batch must be (labels, teacher_logits); "
                             f"got {describe(targets)}")
        labels, teacher = targets
        return losses.distillation(student_logits, teacher, labels, temperature=temperature, alpha=alpha)

    return loss_fn


def teacher_logits(model: Block, params: Params, state: State, inputs: Tensor, *,
                   batch_size: int = 256) -> Tensor:
    """The teacher's evaluation-mode logits for every row of ``inputs``, without gradients.

    Args:
        model, params, state: the trained teacher.
        inputs: ``[n, ...]`` model inputs.
        batch_size: rows per forward pass.

    Returns:
        ``[n, ...]`` logits (the model's output dtype), detached.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"deepfn.train.teacher_logits: batch_size must be a positive int; got {batch_size!r}")
    if not isinstance(inputs, torch.Tensor) or inputs.ndim < 1:
        raise ValueError(f"deepfn.train.teacher_logits: inputs must be a tensor [n, ...]; got {describe(inputs)}")
    outs = []
    with torch.no_grad():
        for start in range(0, inputs.shape[0], batch_size):
            logits, _ = model.apply(params, state, inputs[start:start + batch_size], train=False)
            outs.append(logits)
    return torch.cat(outs)

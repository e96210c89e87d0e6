"""Loss functions ``(predictions, targets) -> scalar`` (or per-element with ``reduction="none"``).

Classes lie on the **last** axis of logits (``[b, v]`` or ``[b, t, v]``), the layout models
return; ``torch.nn.functional.cross_entropy`` wants them on axis 1, so its twin for
``[b, t, v]`` logits is ``F.cross_entropy(logits.movedim(-1, 1), labels)``. float16 and
bfloat16 inputs are computed, and returned, in float32 (a loss in half precision loses
the small differences that training follows). Label values are checked only eagerly:
reading them under ``torch.compile`` or ``vmap`` would break the graph.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ._checks import check_floating, check_integer, describe
from ._torch import plain_eager
from .typing import Tensor

__all__ = ["cross_entropy", "distillation", "mse", "binary_cross_entropy_with_logits"]

_REDUCTIONS = ("mean", "sum", "none")


def _fp32(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_reduction(where: str, reduction: Any) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{where}: reduction must be one of {list(_REDUCTIONS)}; got {reduction!r}")


def _readable(x: Tensor) -> bool:
    return plain_eager([x])


def cross_entropy(logits: Tensor, labels: Tensor, *, label_smoothing: float = 0.0,
                  ignore_index: int | None = None, reduction: str = "mean") -> Tensor:
    """Softmax cross-entropy with integer labels. Twin: ``torch.nn.functional.cross_entropy``.

    Args:
        logits: ``[b, v]`` or ``[b, ..., v]`` (classes last), floating.
        labels: ``[b]`` or ``[b, ...]`` (``logits.shape[:-1]``), integer class ids in
            ``[0, v)`` or ``ignore_index``.
        label_smoothing: in ``[0, 1]``; the target is ``(1 - eps) * onehot + eps / v``.
        ignore_index: a label value that contributes nothing (and is not counted by the mean).
        reduction: ``"mean"`` (over non-ignored elements), ``"sum"`` or ``"none"`` (``labels``'s shape).

    Raises:
        TypeError: non-floating logits or non-integer labels.
        ValueError: shapes that do not match, a bad argument, or (eagerly) a label out of range.

    Examples:
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
        >>> round(cross_entropy(logits, torch.tensor([0, 1])).item(), 4)
        0.1269
    """
    where = "deepfn.losses.cross_entropy"
    check_floating(where, "logits", logits)
    check_integer(where, "labels", labels)
    if logits.ndim < 1 or labels.shape != logits.shape[:-1]:
        raise ValueError(f"{where}: labels must have shape logits.shape[:-1] = {list(logits.shape[:-1])} "
                         f"(classes on the last axis of logits [b, ..., v]); got logits {describe(logits)}, "
                         f"labels {describe(labels)}")
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
            or not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{where}: label_smoothing must be a float in [0, 1]; got {label_smoothing!r}")
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise TypeError(f"{where}: ignore_index must be an int or None; got {ignore_index!r}")
    _check_reduction(where, reduction)
    num_classes = logits.shape[-1]
    if _readable(labels) and labels.numel() > 0:
        bad = (labels < 0) | (labels >= num_classes)
        if ignore_index is not None:
            bad &= labels != ignore_index
        if bool(bad.any()):
            value = labels[bad][0].item()
            allowed = f" or ignore_index={ignore_index}" if ignore_index is not None else ""
            raise ValueError(f"{where}: labels must lie in [0, {num_classes}){allowed} "
                             f"(logits has {num_classes} classes on its last axis); got {value}")
    # Flattening to [N, v] keeps F.cross_entropy's per-element losses and reductions.
    loss = F.cross_entropy(
        _fp32(logits).reshape(-1, num_classes), labels.reshape(-1).long(),
        ignore_index=-100 if ignore_index is None else ignore_index,
        label_smoothing=float(label_smoothing), reduction=reduction,
    )
    return loss.reshape(labels.shape) if reduction == "none" else loss


def distillation(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None = None, *,
                 temperature: float = 4.0, alpha: float = 0.5) -> Tensor:
    """Hinton's knowledge-distillation loss, a 0-d tensor.

    ``alpha * T**2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, labels)``,
    the KL summed over classes and divided by the batch size (``F.kl_div(...,
    reduction="batchmean")``), CE with mean reduction. With ``labels=None`` there is no hard
    target and the loss is the soft term alone, ``T**2 * KL`` (``alpha`` is not used). The
    ``T**2`` keeps the soft gradients' scale independent of ``T``. The teacher is not
    detached: pass teacher logits computed without gradient.

    Args:
        student_logits, teacher_logits: ``[b, v]`` or ``[b, ..., v]``, same shape, floating.
        labels: ``[b]`` / ``[b, ...]`` integer ids, or None.
        temperature: ``T > 0``.
        alpha: weight of the soft term, in ``[0, 1]``.
    """
    where = "deepfn.losses.distillation"
    check_floating(where, "student_logits", student_logits)
    check_floating(where, "teacher_logits", teacher_logits)
    if student_logits.ndim < 2 or teacher_logits.shape != student_logits.shape:
        raise ValueError(f"{where}: teacher_logits must have the shape of student_logits [b, ..., v]; "
                         f"got student {describe(student_logits)}, teacher {describe(teacher_logits)}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"{where}: temperature must be a float > 0; got {temperature!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{where}: alpha must be a float in [0, 1]; got {alpha!r}")
    s, t = _fp32(student_logits), _fp32(teacher_logits)
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    soft = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature ** 2
    if labels is None:
        return soft
    return alpha * soft + (1.0 - alpha) * cross_entropy(student_logits, labels)


def mse(predictions: Tensor, targets: Tensor, *, reduction: str = "mean") -> Tensor:
    """Mean squared error. Twin: ``F.mse_loss`` (without broadcasting: shapes must be equal)."""
    where = "deepfn.losses.mse"
    check_floating(where, "predictions", predictions)
    check_floating(where, "targets", targets)
    if predictions.shape != targets.shape:
        raise ValueError(f"{where}: targets must have the shape of predictions {list(predictions.shape)}; "
                         f"got {describe(targets)}")
    _check_reduction(where, reduction)
    return F.mse_loss(_fp32(predictions), _fp32(targets), reduction=reduction)


def binary_cross_entropy_with_logits(logits: Tensor, targets: Tensor, *, pos_weight: Tensor | None = None,
                                     reduction: str = "mean") -> Tensor:
    """Sigmoid cross-entropy on logits, stable for large ``|logits|``.

    Twin: ``F.binary_cross_entropy_with_logits``. ``targets`` are probabilities in
    ``[0, 1]`` with the shape of ``logits``; ``pos_weight`` broadcasts over the last axis.
    """
    where = "deepfn.losses.binary_cross_entropy_with_logits"
    check_floating(where, "logits", logits)
    check_floating(where, "targets", targets)
    if logits.shape != targets.shape:
        raise ValueError(f"{where}: targets must have the shape of logits {list(logits.shape)}; got {describe(targets)}")
    if pos_weight is not None:
        check_floating(where, "pos_weight", pos_weight)
    _check_reduction(where, reduction)
    pw = None if pos_weight is None else _fp32(pos_weight)
    return F.binary_cross_entropy_with_logits(_fp32(logits), _fp32(targets), pos_weight=pw, reduction=reduction)

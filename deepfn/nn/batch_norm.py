"""Batch normalisation with running statistics returned as new state.

Twin: ``torch.nn.BatchNorm1d`` / ``BatchNorm2d`` (``BatchNorm3d`` for 5-d inputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._checks import check_dim, check_floating, check_params, check_rank, describe, where
from ..typing import Key, Params, State, Tensor

__all__ = ["BatchNorm"]

_HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class BatchNorm:
    """Normalise each channel (axis 1) by batch statistics in training, running ones in eval.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel, with ``mean`` and the
    biased ``var`` taken over every axis but 1. Params: ``weight`` (ones), ``bias`` (zeros),
    ``[num_features]``. State: ``running_mean`` (zeros), ``running_var`` (ones), float32
    ``[num_features]``, and ``num_batches_tracked`` (int64, 0-d), PyTorch's buffer names.

    With ``train=True``, ``apply`` returns a *new* state (nothing is written in place):
    ``running = (1 - momentum) * running + momentum * batch`` with the *unbiased* batch
    variance, and ``num_batches_tracked + 1``; ``momentum=None`` gives the cumulative
    average ``1 / num_batches_tracked``, as PyTorch. With ``train=False`` the running
    statistics normalise and the same ``state`` object comes back. Statistics are computed
    in float32 for half-precision inputs; the output has x's dtype.

    Twin: ``torch.nn.BatchNorm1d`` (``[b, c]``, ``[b, c, L]``), ``torch.nn.BatchNorm2d``
    (``[b, c, H, W]``), with ``affine=True, track_running_stats=True``.
    """

    num_features: int
    momentum: float | None = 0.1
    eps: float = 1e-5

    def __post_init__(self) -> None:
        n = self.num_features
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"BatchNorm: num_features must be a positive int; got {n!r}")
        m = self.momentum
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 <= m <= 1.0):
            raise ValueError(f"BatchNorm: momentum must be a float in [0, 1] or None; got {m!r}")
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not self.eps > 0:
            raise ValueError(f"BatchNorm: eps must be a float > 0; got {self.eps!r}")

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of each param ``init`` makes (what ``apply`` checks)."""
        return {"weight": (self.num_features,), "bias": (self.num_features,)}

    @property
    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of each state entry ``init`` makes (what ``apply`` checks)."""
        c = (self.num_features,)
        return {"running_mean": c, "running_var": c, "num_batches_tracked": ()}

    def init(self, key: Key) -> tuple[Params, State]:
        device, shape = key.device, (self.num_features,)
        params = {"weight": torch.ones(shape, device=device), "bias": torch.zeros(shape, device=device)}
        state = {
            "running_mean": torch.zeros(shape, device=device),
            "running_var": torch.ones(shape, device=device),
            "num_batches_tracked": torch.zeros((), dtype=torch.int64, device=device),
        }
        return params, state

    def apply(self, params: Params, state: State, x: Tensor, *, key: Key | None = None,
              train: bool = False) -> tuple[Tensor, State]:
        """Normalise ``x``.

        Args:
            x: ``[b, c]``, ``[b, c, L]`` or ``[b, c, H, W]`` (or ``[b, c, D, H, W]``),
                floating, ``c == num_features``.
            train: batch statistics and a new state if True, running statistics if False.

        Returns:
            ``(y, state)``: ``y`` of x's shape and dtype; a new state if ``train`` else
            the given one.

        Raises:
            TypeError: ``x`` is not floating point.
            ValueError: wrong rank or channel count; in training, one value per channel;
                params or state with other keys or shapes than ``init``'s, or on another device.
        """
        check_floating(self, "x", x)
        check_rank(self, "x", x, (2, 3, 4, 5), layout="[B, C], [B, C, L] or [B, C, H, W]")
        check_dim(self, "x", x, axis=1, size=self.num_features, hyper="num_features")
        # Params and statistics are cast to the compute dtype below (float32 for half x, as
        # autocast keeps them), so only their device must match x's.
        check_params(self, params, self.param_shapes, like=x, dtype=False)
        check_params(self, state, self.state_shapes, like=x, dtype=False, name="state")
        # ATen's fused batch-norm kernels (one op and one backward op, as torch.nn's module
        # uses) instead of composing var_mean and elementwise ops, whose autograd graph cost an
        # eager cnn-seed step ~40 of ~300 ms on a 2-core CPU. Half inputs go in as they
        # are with float32 parameters and statistics (the kernels' mixed mode, what autocast
        # runs), which accumulates in float32 without copying x to float32 and back.
        compute = torch.float32 if x.dtype in _HALF else x.dtype
        weight, bias = params["weight"].to(compute), params["bias"].to(compute)
        if not train:
            y = F.batch_norm(x, state["running_mean"].to(compute), state["running_var"].to(compute),
                             weight, bias, training=False, eps=self.eps)
            return y, state

        count = x.numel() // self.num_features
        if count <= 1:
            raise ValueError(
                f"{where(self)}: train=True needs more than 1 value per channel to estimate "
                f"the batch variance; got {describe(x)}"
            )
        # The kernel writes its batch statistics into buffers in place; with momentum 1 they
        # receive exactly the mean and the unbiased variance. The buffers are fresh zeros shaped
        # like a slice of x, so under vmap they are batched exactly when x is (per-example or
        # stacked batches), as the batching rule of an in-place update requires.
        probe = x.detach()[(0, slice(None), *([0] * (x.ndim - 2)))]
        mean = torch.zeros_like(probe, dtype=compute)
        unbiased = torch.zeros_like(probe, dtype=compute)
        y = torch.batch_norm(x, weight, bias, mean, unbiased, True, 1.0, self.eps,
                             torch.backends.cudnn.enabled)   # as F.batch_norm: cuDNN on CUDA
        return y, self._updated(state, mean, unbiased)

    def _updated(self, state: State, mean: Tensor, unbiased: Tensor) -> State:
        """New running statistics (PyTorch's update of mean and unbiased variance: momentum or cumulative)."""
        old_mean, old_var = state["running_mean"], state["running_var"]
        tracked = state["num_batches_tracked"] + 1
        if self.momentum is None:
            factor = 1.0 / tracked.to(old_mean.dtype)
        else:
            factor = self.momentum
        # PyTorch's form, (1 - m) * running + m * batch, so the rounding matches too.
        new_mean = (1 - factor) * old_mean + factor * mean.to(old_mean.dtype)
        new_var = (1 - factor) * old_var + factor * unbiased.to(old_var.dtype)
        return {**state, "running_mean": new_mean, "running_var": new_var, "num_batches_tracked": tracked}

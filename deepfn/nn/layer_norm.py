"""Layer normalisation over the trailing axes. Twin: ``torch.nn.LayerNorm``."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .. import random
from .._checks import check_floating, check_params, check_positive, describe, where
from ..typing import Key, Params, State, Tensor
from . import initializers

__all__ = ["LayerNorm"]


@dataclass(frozen=True)
class LayerNorm:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` over the last ``len(normalized_shape)`` axes.

    ``normalized_shape`` is an int or a tuple of ints. Params: ``weight`` (ones) and ``bias``
    (zeros) of that shape; ``scale_init`` / ``bias_init`` (Flax's names) replace those: a
    function ``(key, shape, dtype) -> Tensor`` of ``deepfn.nn.initializers`` or a name of
    ``initializers.BY_NAME`` (``None`` keeps PyTorch's; they take part in equality and hashing
    but not in the repr). Statistics are computed in float32 for half-precision inputs; the
    output has the input's dtype.

    Twin: ``torch.nn.LayerNorm``.
    """

    normalized_shape: int | tuple[int, ...]
    eps: float = 1e-5
    scale_init: initializers.Initializer | str | None = field(default=None, repr=False)
    bias_init: initializers.Initializer | str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        shape = self.shape
        check_positive(self, **{f"normalized_shape[{i}]": s for i, s in enumerate(shape)})
        if not self.eps > 0:
            raise ValueError(f"LayerNorm: eps must be > 0; got {self.eps!r}")
        initializers.check_field(self, "scale_init", self.scale_init)
        initializers.check_field(self, "bias_init", self.bias_init)

    @property
    def shape(self) -> tuple[int, ...]:
        ns = self.normalized_shape
        return (ns,) if isinstance(ns, int) else tuple(ns)

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of each param ``init`` makes (what ``apply`` checks)."""
        return {"weight": self.shape, "bias": self.shape}

    def init(self, key: Key) -> tuple[Params, State]:
        k_scale, k_bias = random.split(key)
        return {"weight": initializers.draw(self, "scale_init", self.scale_init, initializers.ones,
                                            k_scale, self.shape),
                "bias": initializers.draw(self, "bias_init", self.bias_init, initializers.zeros,
                                          k_bias, self.shape)}, {}

    def apply(self, params: Params, state: State, x: Tensor, *, key: Key | None = None,
              train: bool = False) -> tuple[Tensor, State]:
        """``x [..., *normalized_shape]`` floating -> same shape and dtype.

        Raises:
            TypeError: ``x`` is not floating point; params of another dtype than a float32 or
                float64 ``x`` (half ``x`` is normalised in float32, with params of either dtype).
            ValueError: ``x`` does not end in ``normalized_shape``; params with other keys or
                shapes than ``init``'s, or on another device than ``x``.
        """
        check_floating(self, "x", x)
        n = len(self.shape)
        if x.ndim < n or tuple(x.shape[-n:]) != self.shape:
            raise ValueError(
                f"{where(self)}: x must end in {list(self.shape)} (normalized_shape); got {describe(x)}"
            )
        half = x.dtype in (torch.float16, torch.bfloat16)
        check_params(self, params, self.param_shapes, like=x, dtype=not half)
        if half:
            y = F.layer_norm(x.float(), self.shape, params["weight"].float(), params["bias"].float(), self.eps)
            return y.to(x.dtype), state
        return F.layer_norm(x, self.shape, params["weight"], params["bias"], self.eps), state

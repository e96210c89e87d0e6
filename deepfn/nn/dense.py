"""Dense (fully connected) layer. Twin: ``torch.nn.Linear``."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from .. import random
from .._checks import check_dim, check_floating, check_params, check_positive
from ..typing import Key, Params, State, Tensor
from . import initializers

__all__ = ["Dense"]


@dataclass(frozen=True)
class Dense:
    """Affine map over the last axis, ``y = x @ weight.T + bias``.

    Params: ``weight [out_features, in_features]``, ``bias [out_features]`` (if ``bias``),
    initialised as ``torch.nn.Linear`` does.

    Twin: ``torch.nn.Linear``.
    """

    in_features: int
    out_features: int
    bias: bool = True

    def __post_init__(self) -> None:
        check_positive(self, in_features=self.in_features, out_features=self.out_features)

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of each param ``init`` makes (what ``apply`` checks)."""
        shapes = {"weight": (self.out_features, self.in_features)}
        if self.bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def init(self, key: Key) -> tuple[Params, State]:
        k_weight, k_bias = random.split(key)
        params = {"weight": initializers.torch_default(k_weight, (self.out_features, self.in_features))}
        if self.bias:
            params["bias"] = initializers.torch_default_bias(self.in_features)(k_bias, (self.out_features,))
        return params, {}

    def apply(self, params: Params, state: State, x: Tensor, *, key: Key | None = None,
              train: bool = False) -> tuple[Tensor, State]:
        """``x [..., in_features]`` floating -> ``[..., out_features]`` of x's dtype.

        Raises:
            TypeError: ``x`` is not floating point, or a param has another dtype than ``x``.
            ValueError: ``x``'s last axis is not ``in_features``; params with other keys or
                shapes than ``init``'s, or on another device than ``x``.
        """
        check_floating(self, "x", x)
        check_dim(self, "x", x, axis=-1, size=self.in_features, hyper="in_features")
        check_params(self, params, self.param_shapes, like=x)
        return F.linear(x, params["weight"], params.get("bias")), state

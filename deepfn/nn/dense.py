"""Dense (fully connected) layer. Twin: ``torch.nn.Linear``."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import random
from .._checks import check_dim, check_floating, check_params, check_positive
from ..typing import Key, Params, State, Tensor
from . import initializers
from ._linear import linear

__all__ = ["Dense"]


@dataclass(frozen=True)
class Dense:
    """Affine map over the last axis, ``y = x @ weight.T + bias``.

    Params: ``weight [out_features, in_features]``, ``bias [out_features]`` (if ``bias``),
    initialised as ``torch.nn.Linear`` does: ``U(-1/sqrt(in_features), 1/sqrt(in_features))``
    both. ``kernel_init`` / ``bias_init`` replace that: a function ``(key, shape, dtype) ->
    Tensor`` of ``deepfn.nn.initializers`` (e.g. ``initializers.normal(0.02)``,
    ``initializers.zeros``) or a name of ``initializers.BY_NAME``; ``None`` keeps PyTorch's.
    They take part in equality and hashing but not in the repr.

    Twin: ``torch.nn.Linear``.
    """

    in_features: int
    out_features: int
    bias: bool = True
    kernel_init: initializers.Initializer | str | None = field(default=None, repr=False)
    bias_init: initializers.Initializer | str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_positive(self, in_features=self.in_features, out_features=self.out_features)
        initializers.check_field(self, "kernel_init", self.kernel_init)
        initializers.check_field(self, "bias_init", self.bias_init)

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of each param ``init`` makes (what ``apply`` checks)."""
        shapes = {"weight": (self.out_features, self.in_features)}
        if self.bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def init(self, key: Key) -> tuple[Params, State]:
        k_weight, k_bias = random.split(key)
        params = {"weight": initializers.draw(self, "kernel_init", self.kernel_init, initializers.torch_default,
                                              k_weight, (self.out_features, self.in_features))}
        if self.bias:
            params["bias"] = initializers.draw(self, "bias_init", self.bias_init,
                                               initializers.torch_default_bias(self.in_features),
                                               k_bias, (self.out_features,))
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
        return linear(x, params["weight"], params.get("bias")), state

"""Squeeze-and-excitation channel attention. Twin: the seed's ``SEBlock``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._checks import check_dim, check_floating, check_params, check_positive, check_rank
from ..typing import Key, Params, State, Tensor
from ._einops import rearrange
from .block import init_children
from .dense import Dense

__all__ = ["SEBlock"]


@dataclass(frozen=True)
class SEBlock:
    """Rescale each channel by a gate computed from its global average.

    ``s = mean_{H,W}(x)`` gives ``[b, c]``; the gate is
    ``sigmoid(W2 relu(W1 s))`` with ``W1 [c // reduction, c]`` and ``W2 [c, c // reduction]``
    (no biases), and the output is ``x * rearrange(gate, "b c -> b c 1 1")``.

    Params: ``excitation.0.weight`` and ``excitation.2.weight`` (the indices of the two
    ``nn.Linear`` in the seed's ``nn.Sequential(Linear, ReLU, Linear, Sigmoid)``).

    Twin: the seed's ``SEBlock(channels, reduction=16)``.
    """

    channels: int
    reduction: int = 16

    def __post_init__(self) -> None:
        check_positive(self, channels=self.channels, reduction=self.reduction)
        if self.channels // self.reduction < 1:
            raise ValueError(
                f"SEBlock: channels // reduction must be >= 1 (the bottleneck width); got "
                f"channels={self.channels}, reduction={self.reduction}"
            )

    def children(self) -> dict[str, Dense]:
        hidden = self.channels // self.reduction
        return {"0": Dense(self.channels, hidden, bias=False), "2": Dense(hidden, self.channels, bias=False)}

    @property
    def param_shapes(self) -> dict[str, object]:
        """The shape of each param ``init`` makes (what ``apply`` checks)."""
        return {"excitation": {name: dense.param_shapes for name, dense in self.children().items()}}

    def init(self, key: Key) -> tuple[Params, State]:
        params, _ = init_children(self.children(), key)
        return {"excitation": params}, {}

    def apply(self, params: Params, state: State, x: Tensor, *, key: Key | None = None,
              train: bool = False) -> tuple[Tensor, State]:
        """``x [b, channels, H, W]`` floating -> same shape and dtype; ``state`` unchanged.

        Raises:
            TypeError: ``x`` is not floating point, or a weight has another dtype than ``x``.
            ValueError: wrong rank or channel count; params with other keys or shapes than
                ``init``'s, or on another device than ``x``.
        """
        check_floating(self, "x", x)
        check_rank(self, "x", x, 4, layout="[b, c, H, W]")
        check_dim(self, "x", x, axis=1, size=self.channels, hyper="channels")
        check_params(self, params, self.param_shapes, like=x)
        p = params["excitation"]
        # "b c height width -> b c" with Tensor.mean: einops.reduce would cost Dynamo a trace of
        # its pattern parser on every call (docs/benchmarks.md, "einops reshapes").
        squeezed = x.mean(dim=(2, 3))
        gate = torch.sigmoid(F.linear(F.relu(F.linear(squeezed, p["0"]["weight"])), p["2"]["weight"]))
        return x * rearrange(gate, "b c -> b c 1 1"), state

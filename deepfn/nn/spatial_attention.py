"""CBAM's spatial attention gate. Twin: a ``Conv2d(2, 1, 7, padding=3, bias=False)`` gate."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_floating, check_keys, check_rank
from ..typing import Key, Params, State, Tensor
from .block import init_children
from .conv import Conv2d

__all__ = ["SpatialAttention"]


@dataclass(frozen=True)
class SpatialAttention:
    """``x * sigmoid(conv([mean_c(x), max_c(x)]))``: one gate per pixel, shared by all channels.

    The channel-wise mean and max of ``x [b, c, H, W]`` are stacked (mean first) into
    ``[b, 2, H, W]`` and convolved to one map with a ``kernel_size`` x ``kernel_size``
    convolution, zero padding ``kernel_size // 2`` so the size is kept. Params:
    ``conv.weight [1, 2, k, k]`` (and ``conv.bias [1]`` when ``bias``).

    Twin: the spatial gate of CBAM (Woo et al., 2018) as commonly written in PyTorch,
    ``nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)`` followed by a
    sigmoid; this block also multiplies the gate into ``x``.
    """

    kernel_size: int = 7
    bias: bool = False

    def __post_init__(self) -> None:
        k = self.kernel_size
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0 or k % 2 == 0:
            raise ValueError(f"SpatialAttention: kernel_size must be a positive odd int (to keep H, W); got {k!r}")

    def children(self) -> dict[str, Conv2d]:
        return {"conv": Conv2d(2, 1, self.kernel_size, 1, self.kernel_size // 2, bias=self.bias)}

    def init(self, key: Key) -> tuple[Params, State]:
        return init_children(self.children(), key)

    def apply(self, params: Params, state: State, x: Tensor, *, key: Key | None = None,
              train: bool = False) -> tuple[Tensor, State]:
        """``x [b, c, H, W]`` floating (any ``c``) -> same shape and dtype; ``state`` unchanged."""
        check_floating(self, "x", x)
        check_rank(self, "x", x, 4, layout="[b, c, H, W]")
        check_keys(self, params, ("conv",))
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        logits, _ = self.children()["conv"].apply(params["conv"], {}, pooled)
        return x * torch.sigmoid(logits), state

"""Convolutional building blocks of ResNet-style networks: ``ConvBlock`` and ``ResidualBlock``.

Twins: the seed's ``ConvBlock`` / ``ResidualBlock`` (and torchvision's ``BasicBlock``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import random
from .._checks import (
    check_dim,
    check_floating,
    check_keys,
    check_positive,
    check_probability,
    check_rank,
    require_key,
)
from ..typing import Key, Params, State, Tensor
from . import activations
from .batch_norm import BatchNorm
from .block import init_children
from .conv import Conv2d

__all__ = ["ConvBlock", "ResidualBlock", "Shortcut"]


def _check_image(owner: object, x: Tensor, channels: int, hyper: str) -> None:
    check_floating(owner, "x", x)
    check_rank(owner, "x", x, 4, layout="[b, c, H, W]")
    check_dim(owner, "x", x, axis=1, size=channels, hyper=hyper)


def _check_activation(owner: object, activation: object) -> None:
    if not callable(activation) and activation not in activations.names():
        raise ValueError(f"{type(owner).__name__}: activation must be one of {activations.names()} or a "
                         f"callable (add one with deepfn.nn.activations.register); got {activation!r}")


@dataclass(frozen=True)
class ConvBlock:
    """``Conv2d -> BatchNorm? -> activation -> channel dropout?`` on ``[b, c, H, W]``.

    Children: ``conv`` (``Conv2d``, with a bias only when ``batch_norm`` is False) and
    ``batch_norm`` (``BatchNorm``). The dropout zeroes whole channels (``nn.Dropout2d``),
    with masks from ``key``.

    Twin: the seed's ``ConvBlock`` (names ``conv.weight``, ``batch_norm.*``). Divergence:
    the seed maps any activation other than relu/leaky_relu/gelu to identity; here every
    registered name is honoured and an unknown one raises.
    """

    in_channels: int
    out_channels: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    activation: str | Callable[[Tensor], Tensor] = "relu"
    batch_norm: bool = True
    dropout_rate: float = 0.0

    def __post_init__(self) -> None:
        check_positive(self, in_channels=self.in_channels, out_channels=self.out_channels)
        check_probability(self, "dropout_rate", self.dropout_rate)
        _check_activation(self, self.activation)
        self.children()  # Conv2d validates kernel_size, stride, padding

    def children(self) -> dict[str, Conv2d | BatchNorm]:
        out: dict[str, Conv2d | BatchNorm] = {
            "conv": Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                           self.padding, bias=not self.batch_norm)}
        if self.batch_norm:
            out["batch_norm"] = BatchNorm(self.out_channels)
        return out

    def init(self, key: Key) -> tuple[Params, State]:
        return init_children(self.children(), key)

    def apply(self, params: Params, state: State, x: Tensor, *, key: Key | None = None,
              train: bool = False) -> tuple[Tensor, State]:
        """``x [b, in_channels, H, W]`` floating -> ``[b, out_channels, H', W']``.

        ``train=True`` updates the batch-norm statistics (new state) and, with
        ``dropout_rate > 0``, needs ``key``.
        """
        _check_image(self, x, self.in_channels, "in_channels")
        check_keys(self, params, self.children())
        check_keys(self, state, ("batch_norm",) if self.batch_norm else (), name="state")
        use_dropout = train and self.dropout_rate > 0
        if use_dropout:
            require_key(self, key)
        kids = self.children()
        y, _ = kids["conv"].apply(params["conv"], {}, x)
        new_state = state
        if self.batch_norm:
            y, bn_state = kids["batch_norm"].apply(params["batch_norm"], state["batch_norm"], y, train=train)
            if train:
                new_state = {**state, "batch_norm": bn_state}
        y = activations.get(self.activation)(y)
        if use_dropout:
            keep = random.bernoulli(key, 1.0 - self.dropout_rate, (y.shape[0], y.shape[1], 1, 1))
            y = torch.where(keep, y / (1.0 - self.dropout_rate), torch.zeros((), dtype=y.dtype, device=y.device))
        return y, new_state


@dataclass(frozen=True)
class Shortcut:
    """The projection ``1x1 Conv2d(stride, no bias) -> BatchNorm`` named ``0`` and ``1``.

    Twin: ``nn.Sequential(nn.Conv2d(in, out, 1, stride, bias=False), nn.BatchNorm2d(out))``.
    """

    in_channels: int
    out_channels: int
    stride: int = 1

    def children(self) -> dict[str, Conv2d | BatchNorm]:
        return {"0": Conv2d(self.in_channels, self.out_channels, 1, self.stride, bias=False),
                "1": BatchNorm(self.out_channels)}

    def init(self, key: Key) -> tuple[Params, State]:
        return init_children(self.children(), key)

    def apply(self, params: Params, state: State, x: Tensor, *, key: Key | None = None,
              train: bool = False) -> tuple[Tensor, State]:
        check_keys(self, params, ("0", "1"))
        check_keys(self, state, ("1",), name="state")
        conv, bn = self.children().values()
        y, _ = conv.apply(params["0"], {}, x)
        y, bn_state = bn.apply(params["1"], state["1"], y, train=train)
        return y, ({**state, "1": bn_state} if train else state)


@dataclass(frozen=True)
class ResidualBlock:
    """ResNet's basic block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    ``conv1`` is 3x3 with ``stride``, ``conv2`` 3x3 stride 1, both without bias. The
    shortcut is the identity, or, when ``stride != 1`` or the channel counts differ, the
    block's own projection ``downsample`` (1x1 conv + BatchNorm, see ``Shortcut``).

    Twin: the seed's ``ResidualBlock`` with the ``downsample`` its ``_make_layer`` passes
    in; ``torchvision.models.resnet.BasicBlock`` (same names).
    """

    in_channels: int
    out_channels: int
    stride: int = 1

    def __post_init__(self) -> None:
        check_positive(self, in_channels=self.in_channels, out_channels=self.out_channels,
                       stride=self.stride)

    @property
    def has_downsample(self) -> bool:
        return self.stride != 1 or self.in_channels != self.out_channels

    def children(self) -> dict[str, Conv2d | BatchNorm | Shortcut]:
        out: dict[str, Conv2d | BatchNorm | Shortcut] = {
            "conv1": Conv2d(self.in_channels, self.out_channels, 3, self.stride, 1, bias=False),
            "bn1": BatchNorm(self.out_channels),
            "conv2": Conv2d(self.out_channels, self.out_channels, 3, 1, 1, bias=False),
            "bn2": BatchNorm(self.out_channels),
        }
        if self.has_downsample:
            out["downsample"] = Shortcut(self.in_channels, self.out_channels, self.stride)
        return out

    def init(self, key: Key) -> tuple[Params, State]:
        return init_children(self.children(), key)

    def apply(self, params: Params, state: State, x: Tensor, *, key: Key | None = None,
              train: bool = False) -> tuple[Tensor, State]:
        """``x [b, in_channels, H, W]`` floating -> ``[b, out_channels, ceil(H/stride), ceil(W/stride)]``.

        ``train=True`` uses batch statistics and returns the updated running statistics.
        """
        _check_image(self, x, self.in_channels, "in_channels")
        kids = self.children()
        check_keys(self, params, kids)
        check_keys(self, state, [name for name in kids if not name.startswith("conv")], name="state")
        new: State = {}
        y, _ = kids["conv1"].apply(params["conv1"], {}, x)
        y, new["bn1"] = kids["bn1"].apply(params["bn1"], state["bn1"], y, train=train)
        y = F.relu(y)
        y, _ = kids["conv2"].apply(params["conv2"], {}, y)
        y, new["bn2"] = kids["bn2"].apply(params["bn2"], state["bn2"], y, train=train)
        identity = x
        if self.has_downsample:
            identity, new["downsample"] = kids["downsample"].apply(
                params["downsample"], state["downsample"], x, train=train)
        y = F.relu(y + identity)
        return y, ({**state, **new} if train else state)

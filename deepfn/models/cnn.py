"""ResNet-style image classifier with squeeze-excitation. Twins: the seed's ``AdvancedCNN``,
``torchvision.models.resnet18`` / ``resnet34``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn.functional as F

from .. import random, tree
from .._checks import (
    check_choice,
    check_dim,
    check_floating,
    check_keys,
    check_positive,
    check_probability,
    check_rank,
    require_key,
)
from ..nn.block import split_key
from ..nn.dense import Dense
from ..nn.dropout import dropout
from ..nn.resnet import ConvBlock, ResidualBlock
from ..nn.spatial_attention import SpatialAttention
from ..nn.squeeze_excite import SEBlock
from ..train.remat import remat as rematerialise
from ..typing import Key, Params, State, Tensor

__all__ = ["STEMS", "AdvancedCNN"]

STEMS = ("imagenet", "cifar")


@dataclass(frozen=True)
class AdvancedCNN:
    """Stem, four stages of ``ResidualBlock``, optional attention, pooling, dropout, ``fc``.

    - stem ``conv1``: ``stem="imagenet"`` is a 7x7 stride-2 ``ConvBlock`` (conv without
      bias, BatchNorm, relu) then a 3x3 stride-2 max-pool; ``stem="cifar"`` is a 3x3
      stride-1 ``ConvBlock`` without pooling, for small images.
    - ``layer1`` .. ``layer4``: ``num_blocks[i]`` blocks each, widths ``base_channels * (1,
      2, 4, 8)``, the first block of stages 2-4 with stride 2 (and its own ``downsample``).
    - ``attention``: ``SEBlock(8 * base_channels)`` if ``use_attention``; then
      ``spatial_attention`` (CBAM's ``SpatialAttention``) if ``spatial_attention``.
    - global average pool, dropout (``dropout_rate``, needs ``key`` in training), ``fc``.
    - ``remat=True``: in training, each stage ``layer<i>`` runs under :func:`deepfn.remat`, so
      the backward pass recomputes the stage from its input (same values, gradients and new
      batch-norm statistics; less memory, one more forward per stage).

    Params/state names are the seed's ``state_dict`` names (``conv1.conv.weight``,
    ``conv1.batch_norm.running_mean``, ``layer2.0.downsample.0.weight``,
    ``attention.excitation.0.weight``, ``fc.bias``); ``deepfn.interop.torchvision`` maps them
    to torchvision's (``conv1.weight``, ``bn1.*``).

    Twin: the seed's ``AdvancedCNN``; with ``use_attention=False, dropout_rate=0.0`` and
    ``num_blocks=(2, 2, 2, 2)`` / ``(3, 4, 6, 3)``, ``torchvision.models.resnet18`` /
    ``resnet34``. Weights start as PyTorch's layer defaults (the seed's), not torchvision's
    kaiming-normal.
    """

    input_channels: int = 3
    num_classes: int = 10
    base_channels: int = 64
    num_blocks: Sequence[int] = (2, 2, 2, 2)
    use_attention: bool = True
    dropout_rate: float = 0.5
    stem: str = "imagenet"
    spatial_attention: bool = False
    remat: bool = False

    def __post_init__(self) -> None:
        blocks = self.num_blocks
        if (isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence) or len(blocks) != 4
                or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in blocks)):
            raise ValueError(f"AdvancedCNN: num_blocks must be 4 positive ints (blocks per stage); got {blocks!r}")
        object.__setattr__(self, "num_blocks", tuple(blocks))
        check_positive(self, input_channels=self.input_channels, num_classes=self.num_classes,
                       base_channels=self.base_channels)
        check_probability(self, "dropout_rate", self.dropout_rate)
        check_choice(self, "stem", self.stem, STEMS)
        check_choice(self, "remat", self.remat, (True, False))
        if self.use_attention:
            SEBlock(8 * self.base_channels)  # channels // 16 >= 1 is checked there

    def stages(self) -> list[tuple[str, list[ResidualBlock]]]:
        """``("layer<i>", blocks)`` for the four stages."""
        out = []
        width_in = self.base_channels
        for i, count in enumerate(self.num_blocks):
            width = self.base_channels * 2 ** i
            stride = 1 if i == 0 else 2
            blocks = [ResidualBlock(width_in, width, stride)] + [ResidualBlock(width, width)] * (count - 1)
            out.append((f"layer{i + 1}", blocks))
            width_in = width
        return out

    def stem_block(self) -> ConvBlock:
        if self.stem == "imagenet":
            return ConvBlock(self.input_channels, self.base_channels, 7, 2, 3)
        return ConvBlock(self.input_channels, self.base_channels, 3, 1, 1)

    def init(self, key: Key) -> tuple[Params, State]:
        stages = self.stages()
        n_blocks = sum(len(blocks) for _, blocks in stages)
        keys = iter(split_key(key, n_blocks + 4))
        params: Params = {}
        state: State = {}
        params["conv1"], state["conv1"] = self.stem_block().init(next(keys))
        for name, blocks in stages:
            params[name], state[name] = {}, {}
            for j, block in enumerate(blocks):
                params[name][str(j)], state[name][str(j)] = block.init(next(keys))
        k_se, k_sa, k_fc = next(keys), next(keys), next(keys)
        if self.use_attention:
            params["attention"], _ = SEBlock(8 * self.base_channels).init(k_se)
        if self.spatial_attention:
            params["spatial_attention"], _ = SpatialAttention().init(k_sa)
        params["fc"], _ = Dense(8 * self.base_channels, self.num_classes).init(k_fc)
        return params, state

    def apply(self, params: Params, state: State, x: Tensor, *, key: Key | None = None,
              train: bool = False) -> tuple[Tensor, State]:
        """``x [b, input_channels, H, W]`` floating -> logits ``[b, num_classes]``.

        ``train=True`` uses batch statistics (the new state holds updated running
        statistics) and, when ``dropout_rate > 0``, needs ``key``.
        """
        check_floating(self, "x", x)
        check_rank(self, "x", x, 4, layout="[b, c, H, W]")
        check_dim(self, "x", x, axis=1, size=self.input_channels, hyper="input_channels")
        stages = self.stages()
        check_keys(self, params, self._param_keys(stages))
        check_keys(self, state, ["conv1", *(name for name, _ in stages)], name="state")
        for name, blocks in stages:
            check_keys(self, params[name], map(str, range(len(blocks))), name=f"params[{name!r}]")
            check_keys(self, state[name], map(str, range(len(blocks))), name=f"state[{name!r}]")
        use_dropout = train and self.dropout_rate > 0
        if use_dropout:
            require_key(self, key)
        new: State = {}
        y, new["conv1"] = self.stem_block().apply(params["conv1"], state["conv1"], x, train=train)
        if self.stem == "imagenet":
            y = F.max_pool2d(y, kernel_size=3, stride=2, padding=1)
        for name, blocks in stages:
            run = self._stage(blocks, train)
            y, new[name] = (rematerialise(run) if self.remat and train else run)(params[name], state[name], y)
        if self.use_attention:
            y, _ = SEBlock(8 * self.base_channels).apply(params["attention"], {}, y)
        if self.spatial_attention:
            y, _ = SpatialAttention().apply(params["spatial_attention"], {}, y)
        # Global average pool, "b c height width -> b c". Tensor.mean, not einops.reduce: Dynamo
        # traces reduce's pattern parser on every call (docs/benchmarks.md, "einops reshapes").
        y = y.mean(dim=(2, 3))
        y = dropout(y, self.dropout_rate, key if use_dropout else None, use_dropout, owner=self)
        logits, _ = Dense(8 * self.base_channels, self.num_classes).apply(params["fc"], {}, y)
        return logits, ({**state, **new} if train else state)

    def _param_keys(self, stages: list[tuple[str, list[ResidualBlock]]]) -> list[str]:
        keys = ["conv1", *(name for name, _ in stages)]
        keys += ["attention"] * self.use_attention + ["spatial_attention"] * self.spatial_attention
        return [*keys, "fc"]

    @staticmethod
    def _stage(blocks: list[ResidualBlock], train: bool):
        """One stage as ``(params, state, y) -> (y, state)``: the unit that ``remat`` recomputes."""
        def run(params: Params, state: State, y: Tensor) -> tuple[Tensor, State]:
            new: State = {}
            for j, block in enumerate(blocks):
                y, new[str(j)] = block.apply(params[str(j)], state[str(j)], y, train=train)
            return y, new
        return run

    def num_parameters(self) -> int:
        """Trainable element count, as ``sum(p.numel() for p in model.parameters())``."""
        return tree.size(self.init(random.key(0))[0])

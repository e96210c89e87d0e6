"""Rename table: deepfn ``AdvancedCNN`` <-> ``torchvision.models.ResNet`` (resnet18 / resnet34).

deepfn keeps the seed's names; torchvision names the stem ``conv1`` / ``bn1`` and has no
attention. Only the stem differs:

    conv1.conv.weight        -> conv1.weight
    conv1.batch_norm.<leaf>  -> bn1.<leaf>
    layerN.i.*, fc.*         -> unchanged (BasicBlock uses conv1, bn1, conv2, bn2, downsample.0/1)

Shapes and the remaining names are asserted by ``from_torch`` / ``to_torch``.
"""

from __future__ import annotations

import sys
from typing import Any

import torch


def matches_resnet(block: Any, module: torch.nn.Module) -> bool:
    from ..models.cnn import AdvancedCNN

    # Importing torchvision is slow; a ResNet instance means it is imported already.
    resnet = sys.modules.get("torchvision.models.resnet")
    return isinstance(block, AdvancedCNN) and resnet is not None and isinstance(module, resnet.ResNet)


def resnet(block: Any, module: torch.nn.Module) -> Any:
    """The rename for a basic-block ResNet; raises when the configs cannot line up."""
    from torchvision.models.resnet import BasicBlock

    where = f"interop: {block!r} vs torchvision ResNet"
    extras = {"use_attention": True, "spatial_attention": True}
    for field, bad in extras.items():
        if getattr(block, field) == bad:
            raise ValueError(f"{where}: torchvision's ResNet has no attention; build the block with {field}=False")
    if block.stem != "imagenet":
        raise ValueError(f"{where}: torchvision's stem is 7x7 stride 2 with max-pool; build the block with "
                         f"stem='imagenet'; got stem={block.stem!r}")
    counts = tuple(len(getattr(module, f"layer{i}")) for i in range(1, 5))
    if counts != tuple(block.num_blocks):
        raise ValueError(f"{where}: num_blocks must equal the ResNet's blocks per stage {counts}; "
                         f"got {tuple(block.num_blocks)}")
    if not isinstance(module.layer1[0], BasicBlock):
        raise ValueError(f"{where}: only BasicBlock ResNets (resnet18/34) match ResidualBlock; "
                         f"got {type(module.layer1[0]).__name__}")

    def rename(name: str) -> str:
        if name.startswith("conv1.conv."):
            return "conv1." + name.removeprefix("conv1.conv.")
        if name.startswith("conv1.batch_norm."):
            return "bn1." + name.removeprefix("conv1.batch_norm.")
        return name

    return rename

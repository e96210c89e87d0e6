"""Rename table: deepfn ``AdvancedCNN`` <-> ``torchvision.models.ResNet`` (resnet18 / resnet34).

deepfn keeps the seed's names; torchvision names the stem ``conv1`` / ``bn1`` and has no
attention. Only the stem differs:

    conv1.conv.weight        -> conv1.weight
    conv1.batch_norm.<leaf>  -> bn1.<leaf>
    layerN.i.*, fc.*         -> unchanged (BasicBlock uses conv1, bn1, conv2, bn2, downsample.0/1)

The stem is read from the module's layers, not from a name: torchvision's own
(``conv1`` 7x7 stride 2 padding 3, ``maxpool`` a 3x3 stride-2 ``MaxPool2d``) matches
``stem="imagenet"``; the usual CIFAR adaptation (``conv1`` 3x3 stride 1 padding 1, both
without bias, ``maxpool`` an ``nn.Identity``) matches ``stem="cifar"``. Shapes and the
remaining names are asserted by ``from_torch`` / ``to_torch``.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

__all__ = ["matches_resnet", "resnet"]


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
    _check_stem(block.stem, module, where)
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


#: stem -> (conv1's kernel, stride, padding; whether ``maxpool`` is a 3x3 stride-2 max-pool).
_STEMS = {"imagenet": (7, 2, 3, True), "cifar": (3, 1, 1, False)}


def _conv_is(conv: Any, kernel: int, stride: int, padding: int) -> bool:
    return (isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (kernel, kernel)
            and conv.stride == (stride, stride) and conv.padding == (padding, padding)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.bias is None
            and conv.padding_mode == "zeros")


def _pool_is(pool: Any, max_pool: bool) -> bool:
    if not max_pool:
        return isinstance(pool, torch.nn.Identity)
    pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
    return (isinstance(pool, torch.nn.MaxPool2d) and pair(pool.kernel_size) == (3, 3)
            and pair(pool.stride) == (2, 2) and pair(pool.padding) == (1, 1)
            and pair(pool.dilation) == (1, 1) and not pool.ceil_mode)


def _stem_of(module: torch.nn.Module) -> str | None:
    """The stem that ``module``'s ``conv1`` and ``maxpool`` layers implement, if any."""
    for stem, (kernel, stride, padding, max_pool) in _STEMS.items():
        if _conv_is(getattr(module, "conv1", None), kernel, stride, padding) and \
                _pool_is(getattr(module, "maxpool", None), max_pool):
            return stem
    return None


def _check_stem(stem: str, module: torch.nn.Module, where: str) -> None:
    """Raise ``ValueError`` naming the layer when ``module``'s stem is not the block's ``stem``."""
    kernel, stride, padding, max_pool = _STEMS[stem]
    found = _stem_of(module)
    hint = f"; the module's layers match stem={found!r}: build the block with it" if found else ""
    conv = getattr(module, "conv1", None)
    if not _conv_is(conv, kernel, stride, padding):
        raise ValueError(f"{where}: stem={stem!r} needs conv1 = Conv2d(kernel_size={kernel}, stride={stride}, "
                         f"padding={padding}, bias=False); got conv1 = {conv!r}{hint}")
    pool = getattr(module, "maxpool", None)
    if not _pool_is(pool, max_pool):
        want = "MaxPool2d(kernel_size=3, stride=2, padding=1)" if max_pool else "Identity() (no pooling)"
        raise ValueError(f"{where}: stem={stem!r} needs maxpool = {want}; got maxpool = {pool!r}{hint}")

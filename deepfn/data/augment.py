"""Keyed image augmentations: pure functions of their key, vectorised over the batch.

Each image gets its own draw from one key (no Python loop over images), so the same key
gives the same batch of augmented images and the input is never modified.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import random
from .._checks import check_rank, describe

__all__ = ["random_crop", "random_flip"]


def _check_key(fn: str, key: object) -> None:
    if not isinstance(key, torch.Tensor) or key.dtype != torch.int64 or key.shape != (2,):
        raise TypeError(f"deepfn.data.{fn}: key must be an int64 tensor [2] from random.key; got {describe(key)}")


def random_crop(key: torch.Tensor, images: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad every side by ``padding``, then cut an ``H x W`` window at a random offset per image.

    Twin: ``torchvision.transforms.RandomCrop(size=(H, W), padding=padding)`` applied to
    each image, with offsets drawn from ``key`` instead of the global RNG.

    Args:
        key: ``int64 [2]``.
        images: ``[b, c, H, W]``, any dtype (padding is zero in that dtype).
        padding: non-negative int; ``0`` returns an equal copy.

    Returns:
        ``[b, c, H, W]``, same dtype and device.

    Raises:
        TypeError: ``key`` is not a key. ValueError: ``images`` is not 4-d or ``padding`` < 0.
    """
    _check_key("random_crop", key)
    check_rank("deepfn.data.random_crop", "images", images, 4, layout="[B, C, H, W]")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"deepfn.data.random_crop: padding must be a non-negative int; got {padding!r}")
    b, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = random.randint(key, (b, 2), 0, 2 * padding + 1).to(images.device)
    # Gather each image's window with broadcast index tensors:
    # rows [b, 1, H, 1] and cols [b, 1, 1, W] pick padded[i, :, oy_i + r, ox_i + s].
    rows = offsets[:, 0, None] + torch.arange(h, device=images.device)
    cols = offsets[:, 1, None] + torch.arange(w, device=images.device)
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def random_flip(key: torch.Tensor, images: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right (last axis) with probability ``p``.

    Twin: ``torchvision.transforms.RandomHorizontalFlip(p)`` per image, keyed.

    Args:
        key: ``int64 [2]``.
        images: ``[b, c, H, W]``, any dtype.
        p: flip probability in ``[0, 1]``.

    Returns:
        ``[b, c, H, W]``, same dtype and device.

    Raises:
        TypeError: ``key`` is not a key. ValueError: ``images`` is not 4-d or ``p`` outside ``[0, 1]``.
    """
    _check_key("random_flip", key)
    check_rank("deepfn.data.random_flip", "images", images, 4, layout="[B, C, H, W]")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"deepfn.data.random_flip: p must be a float in [0, 1]; got {p!r}")
    flip = random.bernoulli(key, p, (images.shape[0],)).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)

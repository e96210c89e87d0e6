"""Boolean attention masks: ``True`` means "may attend".

Masks broadcast against attention scores ``[b, h, t, s]``, so a padding mask is
``[b, 1, 1, s]`` (one row for every query and head) and a causal mask ``[1, 1, t, s]``.
Combine them with ``combine`` (logical and). Float masks are refused everywhere: an
additive mask (``0`` / ``-inf``) and a multiplicative one (``1`` / ``0``) look alike but
mean opposite things, so deepfn only takes booleans.

Examples:
    >>> import torch
    >>> from deepfn import nn
    >>> tokens = torch.tensor([[5, 6, 0]])
    >>> nn.combine(nn.padding_mask(tokens, 0), nn.causal_mask(3)).shape
    torch.Size([1, 1, 3, 3])
"""

from __future__ import annotations

import torch

from .._checks import check_integer, check_rank, describe, where
from ..typing import Tensor

__all__ = ["padding_mask", "causal_mask", "combine", "check_mask"]


def padding_mask(tokens: Tensor, pad_id: int) -> Tensor:
    """Keys that are not padding.

    Args:
        tokens: ``[b, s]`` integer ids.
        pad_id: the padding id.

    Returns:
        bool ``[b, 1, 1, s]``, ``True`` where ``tokens != pad_id``.

    Raises:
        ValueError: ``tokens`` is not 2-d. TypeError: ``tokens`` is not an integer tensor.
    """
    check_rank("padding_mask", "tokens", tokens, 2, layout="[B, T]")
    check_integer("padding_mask", "tokens", tokens)
    if isinstance(pad_id, bool) or not isinstance(pad_id, int):
        raise TypeError(f"padding_mask: pad_id must be an int; got {type(pad_id).__name__} {pad_id!r}")
    return (tokens != pad_id)[:, None, None, :]


def causal_mask(length: int, device: torch.device | str | None = None) -> Tensor:
    """Each query position may attend to itself and to earlier positions.

    Args:
        length: the sequence length ``t``.
        device: where to create the mask (default: the default device).

    Returns:
        bool ``[1, 1, t, t]``, lower-triangular ``True`` (``mask[..., i, j] = j <= i``).
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"causal_mask: length must be a positive int; got {length!r}")
    pos = torch.arange(length, device=device)
    return (pos[None, :] <= pos[:, None])[None, None]


def combine(*masks: Tensor | None) -> Tensor | None:
    """Logical and of boolean masks (broadcast together); ``None`` entries are skipped.

    Returns ``None`` when every mask is ``None`` (no masking).
    """
    out = None
    for i, m in enumerate(masks):
        if m is None:
            continue
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            raise TypeError(f"combine: mask {i} must be a bool tensor (True = may attend); got {describe(m)}")
        out = m if out is None else out & m
    return out


def check_mask(owner: object, name: str, mask: object, target: tuple[int, ...], method: str = "apply") -> None:
    """Raise unless ``mask`` is bool and broadcastable to ``target`` (``[b, h, t, s]``).

    Only metadata is read, and messages are built only on failure (a block's ``repr``
    does not trace under ``torch.compile``), so the check is free when it passes.
    """
    if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and mask.ndim <= len(target) and all(
        m in (1, n) for m, n in zip(reversed(mask.shape), reversed(target), strict=False)
    ):
        return
    at = where(owner, method)
    want = f"[{', '.join(str(n) for n in target)}]"
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{at}: {name} must be a bool tensor broadcastable to {want}; got {describe(mask)}")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"{at}: {name} must be bool (True = may attend) and broadcastable to {want}; got "
            f"{describe(mask)}. Float masks are ambiguous (additive 0/-inf vs multiplicative 1/0): "
            "convert with `mask == 0` for an additive mask or `mask.bool()` for a 0/1 keep-mask"
        )
    raise ValueError(f"{at}: {name} must be bool and broadcastable to {want} [B, H, T, S]; got {describe(mask)}")

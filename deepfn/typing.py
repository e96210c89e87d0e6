"""Type aliases and the block protocol shared across deepfn.

Axis alphabet used in docstrings, shape comments and einops patterns:

    b  batch            t  query / target length     s  key / source length
    h  attention heads  d  per-head feature size      e  embedding (d_model)
    c  channels         f  feed-forward width         v  vocabulary
    n  ensemble member / stacked parameter set        k  beam (hypotheses per row)

Image axes are spelled out, ``height`` and ``width`` (``h`` is taken by heads). A grouped
axis is written as einops writes it: ``(h d)`` is ``e`` split into heads, as in
``rearrange(q, "b t (h d) -> b h t d", h=n_heads)`` (``rearrange`` from
:mod:`deepfn.nn._einops`).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["Block", "Key", "Params", "PyTree", "State", "Tensor"]

Tensor = torch.Tensor
#: A pytree of tensors: nested ``dict[str, ...]`` with ``Tensor`` leaves.
PyTree = Any
Params = dict[str, Any]
State = dict[str, Any]
#: A random key: ``int64 [2]`` holding two 32-bit words (see :mod:`deepfn.random`).
Key = torch.Tensor


@runtime_checkable
class Block(Protocol):
    """What every layer and model offers: a frozen config with a pure ``init``/``apply`` pair."""

    def init(self, key: Key) -> tuple[Params, State]: ...

    def apply(
        self, params: Params, state: State, *inputs: Any, key: Key | None = None, train: bool = False
    ) -> tuple[Any, State]: ...

"""Type aliases and the block protocol shared across deepfn.

Axis alphabet used in docstrings and shape comments:

    b  batch            t  query / target length     s  key / source length
    h  attention heads  d  per-head feature size      e  embedding (d_model)
    c  channels         f  feed-forward width         v  vocabulary
    n  ensemble member / stacked parameter set
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

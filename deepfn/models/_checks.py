"""The token-id check shared by the sequence models (``GPT``, ``Transformer``)."""

from __future__ import annotations

from typing import Any

from .._checks import check_integer, check_rank, describe, where
from .._torch import plain_eager
from ..typing import Tensor


def check_token_ids(owner: Any, name: str, ids: Tensor, method: str, *, vocab_size: int,
                    max_len: int, max_len_name: str) -> None:
    """Check ``ids``, an integer ``[B, T]`` tensor of token ids, for ``owner.method``.

    Dtype (``TypeError``), rank and length ``1 <= T <= max_len`` (``ValueError``) are read from
    metadata; the range ``[0, vocab_size)`` is read from the values, so only when called
    eagerly on plain tensors (a host sync: skipped under ``torch.compile`` and inside
    ``torch.func`` transforms, where PyTorch's lookup raises on a bad id instead). Every
    message starts with ``where(owner, method)`` (the model's repr and method) and names
    ``name`` and the hyperparameter ``max_len_name`` (``"max_len"``, ``"max_seq_len"``).
    """
    check_integer(owner, name, ids, method)
    check_rank(owner, name, ids, 2, layout="[B, T] of token ids", method=method)
    if not 1 <= ids.shape[1] <= max_len:
        raise ValueError(f"{where(owner, method)}: {name} must have 1 to {max_len} positions "
                         f"({max_len_name}={max_len}); got {ids.shape[1]} positions, {describe(ids)}")
    if not plain_eager([ids]):
        return
    bad = (ids < 0) | (ids >= vocab_size)
    if bool(bad.any()):
        raise ValueError(f"{where(owner, method)}: {name} must lie in [0, {vocab_size}) (vocab_size); "
                         f"got id {int(ids[bad][0])} in {describe(ids)}")

"""A token stream cut into contiguous blocks of (inputs, next-token labels) for language models."""

from __future__ import annotations

import torch

from .._checks import describe

__all__ = ["next_token_blocks"]

_WHERE = "deepfn.data.next_token_blocks"


def next_token_blocks(ids: torch.Tensor, block_size: int, *, pad_last: bool = False, pad_id: int = 0,
                      ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut ``ids`` into consecutive, non-overlapping blocks: each row's labels are its inputs
    shifted by one token (row ``i`` predicts ``ids[i*T + 1 : i*T + T + 1]`` from
    ``ids[i*T : i*T + T]``), so every token after the first is a label at most once.

    Args:
        ids: ``int64 [L]``, one long token stream (e.g. text joined with newlines).
        block_size: ``T``, the tokens per row.
        pad_last: False: ``(L - 1) // T`` full rows, the tail that fills no row is dropped
            (training). True: ``ceil((L - 1) / T)`` rows, the last one padded, so that every
            next-token prediction of the stream appears exactly once (a whole held-out split).
        pad_id: the input id of padded positions (any valid id: a causal model's earlier
            positions never see it).
        ignore_index: the label of padded positions (``losses.cross_entropy(ignore_index=...)``).

    Returns:
        ``(inputs, labels)``, both ``int64 [n, T]``; the labels that count are
        ``labels != ignore_index`` (all of them without ``pad_last``).

    Raises:
        TypeError: ``ids`` is not a 1-d integer tensor.
        ValueError: ``block_size`` is not a positive int, or the stream is too short for one
            row (``L < T + 1`` without ``pad_last``, ``L < 2`` with it).

    Examples:
        >>> x, y = next_token_blocks(torch.arange(8), 3)
        >>> x.tolist(), y.tolist()
        ([[0, 1, 2], [3, 4, 5]], [[1, 2, 3], [4, 5, 6]])
        >>> next_token_blocks(torch.arange(8), 3, pad_last=True)[1].tolist()
        [[1, 2, 3], [4, 5, 6], [7, -100, -100]]
    """
    if not isinstance(ids, torch.Tensor) or ids.ndim != 1 or ids.is_floating_point() or ids.is_complex() \
            or ids.dtype == torch.bool:
        raise TypeError(f"{_WHERE}: ids must be a 1-d integer tensor [L] (a token stream); got {describe(ids)}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"{_WHERE}: block_size must be a positive int; got {block_size!r}")
    ids = ids.long()
    predictions = ids.numel() - 1
    need = 2 if pad_last else block_size + 1
    if ids.numel() < need:
        raise ValueError(f"{_WHERE}: ids must hold at least {need} tokens for one block of block_size="
                         f"{block_size}{' (pad_last=True)' if pad_last else ''}; got {ids.numel()}")
    if not pad_last:
        n = predictions // block_size
        inputs = ids[:n * block_size].reshape(n, block_size)
        labels = ids[1:n * block_size + 1].reshape(n, block_size)
        return inputs, labels
    n = -(-predictions // block_size)
    extra = n * block_size - predictions
    inputs = torch.cat([ids[:-1], ids.new_full((extra,), pad_id)]).reshape(n, block_size)
    labels = torch.cat([ids[1:], ids.new_full((extra,), ignore_index)]).reshape(n, block_size)
    return inputs, labels

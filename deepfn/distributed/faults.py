"""Failing fast: a clear error for lost ranks, and a start-up check that all ranks agree.

A data-parallel job whose ranks hold different parameter trees (a different model
config on one node, a stale checkpoint) would all-reduce mismatched buckets: at best a
size error deep inside a collective, at worst silently mixed gradients.
:func:`check_same_structure` compares the trees once, before training, and names the
entries that differ.
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist

from .._torch import pytree
from ..typing import PyTree
from .process import is_initialized, rank, world_size

__all__ = ["CollectiveError", "check_same_structure", "describe_leaves"]


class CollectiveError(RuntimeError):
    """A collective failed or timed out: another rank died, hangs or diverged."""


def _dotted(path: tuple) -> str:
    # tree.flatten's names ("network.0.weight"), for dict, sequence and dataclass nodes alike.
    parts = [getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path]
    return ".".join(str(p) for p in parts)


def describe_leaves(tree: PyTree) -> list[str]:
    """One line per leaf, ``"network.0.weight float32[4, 3]"``, in tree order (the digest's input)."""
    lines = []
    for path, leaf in pytree.tree_flatten_with_path(tree)[0]:
        name = _dotted(path)
        if isinstance(leaf, torch.Tensor):
            lines.append(f"{name} {str(leaf.dtype).removeprefix('torch.')}{list(leaf.shape)}")
        else:
            lines.append(f"{name} {type(leaf).__name__}")
    return lines


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _difference(mine: list[str], theirs: list[str], r0: int, r1: int, limit: int = 8) -> str:
    a, b = set(mine), set(theirs)
    parts = []
    only0, only1 = [x for x in mine if x not in b], [x for x in theirs if x not in a]
    if only0:
        parts.append(f"only on rank {r0}: {only0[:limit]}")
    if only1:
        parts.append(f"only on rank {r1}: {only1[:limit]}")
    if not parts:
        parts.append("the same entries in a different order")
    return "; ".join(parts)


def check_same_structure(tree: PyTree, name: str = "params") -> str:
    """Check that every rank holds a tree with the same paths, shapes and dtypes.

    Each rank hashes (sha256) the list of its leaves' paths, shapes and dtypes and the
    digests are exchanged with ``all_gather_object``; only if they differ are the lists
    themselves exchanged, to name the entries. Every rank raises the same error, so the
    whole job stops at start-up. Values are not compared: use :func:`broadcast` to make
    them equal.

    Args:
        tree: the pytree to compare (parameters, state, optimizer state).
        name: what the tree is, for the message.

    Returns:
        The hex digest (the same on every rank). In a single process no communication happens.

    Raises:
        ValueError: some rank's tree differs from rank 0's; the message names the ranks and
            the entries found on one side only.
    """
    lines = describe_leaves(tree)
    digest = _digest(lines)
    if world_size() == 1 or not is_initialized():
        return digest
    digests: list[str | None] = [None] * world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) == 1:
        return digest
    listings: list[list[str] | None] = [None] * world_size()
    dist.all_gather_object(listings, lines)
    bad = [r for r, d in enumerate(digests) if d != digests[0]]
    details = " | ".join(f"rank {r} vs rank 0: {_difference(listings[0], listings[r], 0, r)}" for r in bad[:4])
    raise ValueError(
        f"deepfn.distributed.check_same_structure: {name} differ between ranks (this is rank {rank()}): "
        f"ranks {bad} disagree with rank 0 on names, shapes or dtypes: {details}"
    )

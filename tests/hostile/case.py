"""One hostile input: a call that must fail with a clear error, and what the error must say."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from deepfn import random


class Case(NamedTuple):
    """``fn()`` must raise ``exc`` whose message matches ``match`` (``re.search``): the
    argument or flag, and what was expected or what came."""

    id: str
    fn: Callable[[], object]
    exc: type[BaseException]
    match: str


def k(seed: int = 0) -> torch.Tensor:
    return random.key(seed)


def x(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A fixed tensor (values from a key, so no global RNG)."""
    return random.normal(k(1), shape).to(dtype)


def init(block):
    return block.init(k())


def apply(block, *inputs, params=None, state=None, **kw):
    """``block.apply`` with its own ``init`` params/state unless others are given."""
    p, s = init(block)
    return block.apply(p if params is None else params, s if state is None else state, *inputs, **kw)

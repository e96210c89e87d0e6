"""Inverted dropout driven by an explicit key. Twin: ``torch.nn.Dropout`` (not its RNG)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import random
from .._checks import check_probability, check_tensor, require_key
from ..typing import Key, Params, State, Tensor

__all__ = ["Dropout", "dropout"]


def dropout(x: Tensor, rate: float, key: Key | None, train: bool, owner: object = "dropout") -> Tensor:
    """Zero each element with probability ``rate`` and scale the rest by ``1 / (1 - rate)``.

    Identity when ``train`` is False or ``rate == 0``. ``owner`` names the caller in errors.
    """
    if not train or rate == 0.0:
        return x
    require_key(owner, key)
    keep = random.bernoulli(key, 1.0 - rate, tuple(x.shape))
    return torch.where(keep, x / (1.0 - rate), 0.0)   # a Python zero keeps x's dtype


@dataclass(frozen=True)
class Dropout:
    """Inverted dropout; ``rate`` is the probability of zeroing an element.

    ``apply(..., train=True)`` needs ``key``; the same key gives the same mask, eagerly,
    compiled and under ``vmap`` (a batch of keys gives a batch of masks).

    Twin: ``torch.nn.Dropout(p=rate)`` in distribution; masks come from deepfn keys.
    """

    rate: float

    def __post_init__(self) -> None:
        check_probability(self, "rate", self.rate)

    def init(self, key: Key) -> tuple[Params, State]:
        return {}, {}

    def apply(self, params: Params, state: State, x: Tensor, *, key: Key | None = None,
              train: bool = False) -> tuple[Tensor, State]:
        """``x [...]`` -> same shape and dtype."""
        check_tensor(self, "x", x)
        return dropout(x, self.rate, key, train, owner=self), state

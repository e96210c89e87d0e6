"""Lookup table of learned vectors for integer ids. Twin: ``torch.nn.Embedding``."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .._checks import check_integer, check_params, describe, where
from .._torch import plain_eager
from ..typing import Key, Params, State, Tensor
from . import initializers

__all__ = ["Embedding"]


@dataclass(frozen=True)
class Embedding:
    """Map ids ``[...]`` to rows of ``weight [num_embeddings, embedding_dim]``.

    Params: ``weight``, initialised ``N(0, 1)`` as ``torch.nn.Embedding``, or by
    ``embedding_init``: a function ``(key, shape, dtype) -> Tensor`` of
    ``deepfn.nn.initializers`` (GPT-2 uses ``initializers.normal(0.02)``) or a name of
    ``initializers.BY_NAME`` (``None`` keeps PyTorch's; it takes part in equality and hashing
    but not in the repr). With ``padding_idx`` set, that row starts at zero whatever the
    initializer and receives no gradient (PyTorch's semantics); a negative ``padding_idx``
    counts from the end.

    Ids are checked for an integer dtype always and for the range ``[0, num_embeddings)``
    when called eagerly on plain tensors (a ``ValueError`` naming the first bad id). The
    range check reads values, so it is skipped under ``torch.compile`` (it would break the
    graph) and inside ``torch.func`` transforms (wrapped tensors cannot be read); there an
    id out of range makes PyTorch's lookup raise ``IndexError`` on CPU (a device-side assert
    on CUDA).

    Twin: ``torch.nn.Embedding(num_embeddings, embedding_dim, padding_idx)``.
    """

    num_embeddings: int
    embedding_dim: int
    padding_idx: int | None = None
    embedding_init: initializers.Initializer | str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        initializers.check_field(self, "embedding_init", self.embedding_init)
        for name in ("num_embeddings", "embedding_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"Embedding: {name} must be a positive int; got {value!r}")
        p = self.padding_idx
        if p is not None and (isinstance(p, bool) or not isinstance(p, int)
                              or not -self.num_embeddings <= p < self.num_embeddings):
            raise ValueError(
                f"Embedding: padding_idx must be None or an int in [-{self.num_embeddings}, "
                f"{self.num_embeddings}) (num_embeddings); got {p!r}"
            )

    @property
    def _padding_row(self) -> int | None:
        p = self.padding_idx
        return None if p is None else p % self.num_embeddings

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of each param ``init`` makes (what ``apply`` checks)."""
        return {"weight": (self.num_embeddings, self.embedding_dim)}

    def init(self, key: Key) -> tuple[Params, State]:
        weight = initializers.draw(self, "embedding_init", self.embedding_init, initializers.normal(1.0),
                                   key, (self.num_embeddings, self.embedding_dim))
        row = self._padding_row
        if row is not None:
            # Zero the padding row out of place (index_fill) rather than writing into weight.
            weight = weight.index_fill(0, weight.new_tensor([row], dtype=torch.int64), 0.0)
        return {"weight": weight}, {}

    def apply(self, params: Params, state: State, ids: Tensor, *, key: Key | None = None,
              train: bool = False) -> tuple[Tensor, State]:
        """Look up ``ids``.

        Args:
            ids: ``[...]``, any integer dtype (int64 usually), values in ``[0, num_embeddings)``.

        Returns:
            ``([..., embedding_dim], state)`` in the weight's dtype; ``state`` unchanged.

        Raises:
            TypeError: ``ids`` is floating point, bool or complex; the weight is not floating.
            ValueError: an id outside ``[0, num_embeddings)`` (eagerly); params with other keys
                or shapes than ``init``'s, or on another device than ``ids``.
        """
        check_integer(self, "ids", ids)
        check_params(self, params, self.param_shapes, like=ids, dtype=False)
        if not params["weight"].is_floating_point():
            raise TypeError(f"{where(self)}: params['weight'] must be floating point; "
                            f"got {describe(params['weight'])}")
        if plain_eager([ids]):
            bad = (ids < 0) | (ids >= self.num_embeddings)
            if bool(bad.any()):
                raise ValueError(f"{where(self)}: ids must lie in [0, {self.num_embeddings}) (num_embeddings); "
                                 f"got id {int(ids[bad][0])} in {describe(ids)}")
        if ids.dtype not in (torch.int32, torch.int64):
            ids = ids.to(torch.int64)   # the lookup kernel takes int32/int64 indices only
        return F.embedding(ids, params["weight"], padding_idx=self._padding_row), state


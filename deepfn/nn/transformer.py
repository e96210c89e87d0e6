"""Transformer encoder and decoder layers (post-LN and pre-LN).

Twins: ``torch.nn.TransformerEncoderLayer`` / ``torch.nn.TransformerDecoderLayer`` with
``batch_first=True``: the same child names (``self_attn``, ``multihead_attn``, ``linear1``,
``linear2``, ``norm1..3``), the same dropout placements (attention weights, after each
sub-block, after the feed-forward activation) and masks inverted (deepfn: ``True`` = may
attend). ``TransformerDecoderLayer.decode_step`` runs the decoder incrementally: the keys
and values of the prefix live in a cache that grows by concatenation, never recomputed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import random
from .._checks import (
    check_dim,
    check_floating,
    check_keys,
    check_positive,
    check_probability,
    check_rank,
    check_same_dtype,
    describe,
    require_key,
    where,
)
from ..typing import Block, Key, Params, State, Tensor
from . import activations
from .attention import MultiHeadAttention
from .block import init_children
from .dense import Dense
from .dropout import dropout as _dropout
from .layer_norm import LayerNorm
from .masks import check_mask, combine

__all__ = ["TransformerDecoderLayer", "TransformerEncoderLayer"]

#: Self-attention cache of a decoder layer: keys and values of the prefix, each ``[b, h, p, d]``.
KVCache = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class _LayerBase:
    d_model: int
    n_heads: int
    d_ff: int
    dropout: float = 0.1
    activation: str | Callable[[Tensor], Tensor] = "relu"
    norm_first: bool = False
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_positive(self, d_model=self.d_model, n_heads=self.n_heads, d_ff=self.d_ff)
        if self.d_model % self.n_heads:
            raise ValueError(f"{name}: d_model must be divisible by n_heads; got d_model={self.d_model}, "
                             f"n_heads={self.n_heads}")
        check_probability(self, "dropout", self.dropout)
        try:
            activations.get(self.activation)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
        if not self.layer_norm_eps > 0:
            raise ValueError(f"{name}: layer_norm_eps must be > 0; got {self.layer_norm_eps!r}")

    def _common_children(self) -> dict[str, Block]:
        return {
            "linear1": Dense(self.d_model, self.d_ff),
            "linear2": Dense(self.d_ff, self.d_model),
        }

    def init(self, key: Key) -> tuple[Params, State]:
        return init_children(self.children(), key)  # type: ignore[attr-defined]

    def _check_x(self, name: str, x: Tensor, method: str = "apply") -> None:
        check_rank(self, name, x, 3, layout="[B, T, d_model]", method=method)
        check_floating(self, name, x, method=method)
        check_dim(self, name, x, axis=-1, size=self.d_model, hyper="d_model", method=method)

    def _dropping(self, train: bool) -> bool:
        return train and self.dropout > 0.0

    def layer_keys(self, key: Key | None, train: bool = True) -> Tensor | None:
        """The keys of this layer's dropout sites, ``int64 [n_keys, 2]`` (``random.split(key,
        n_keys)``), as ``apply`` derives them from its ``key``; ``None`` when nothing is dropped.

        A model of many layers may instead cut every layer's rows out of one ``random.split``
        of its own key and pass them to ``apply_keyed``: one derivation for the whole model.
        """
        if not self._dropping(train):
            return None
        require_key(self, key)
        return random.split(key, self.n_keys)

    def stack_rows(self, keys: Tensor | None, i: int) -> Tensor | None:
        """Layer ``i``'s rows ``[n_keys, 2]`` of a stack's keys ``[n_layers * n_keys, 2]`` (for
        ``apply_keyed``); ``None`` stays ``None``."""
        return None if keys is None else keys[i * self.n_keys:(i + 1) * self.n_keys]

    def _keys_of(self, key: Key | None, train: bool) -> list[Key | None]:
        """One key per dropout site from ``apply``'s ``key`` (``layer_keys``), or ``None``s."""
        keys = self.layer_keys(key, train)
        return [None] * self.n_keys if keys is None else list(keys.unbind(0))

    def _site_keys(self, keys: Tensor | None, train: bool, method: str) -> list[Key | None]:
        """``keys [n_keys, 2]`` as one key per dropout site (``None``s when nothing is dropped)."""
        if not self._dropping(train):
            return [None] * self.n_keys
        if keys is None:
            raise ValueError(f"{where(self, method)}: train=True needs keys for dropout: int64 [{self.n_keys}, 2] "
                             "from layer_keys(key) or rows of random.split; or call with train=False")
        if not isinstance(keys, torch.Tensor) or keys.dtype != torch.int64 or tuple(keys.shape) != (self.n_keys, 2):
            raise ValueError(f"{where(self, method)}: keys must be int64 [{self.n_keys}, 2] (one key per dropout "
                             f"site); got {describe(keys)}")
        return list(keys.unbind(0))

    def _drop(self, x: Tensor, key: Key | None, train: bool) -> Tensor:
        return _dropout(x, self.dropout, key, train, owner=self)

    def _ff(self, params: Params, x: Tensor, k_act: Key | None, k_out: Key | None, train: bool) -> Tensor:
        """``dropout(linear2(dropout(act(linear1(x)))))``: torch's ``_ff_block`` and its dropout."""
        c = self._common_children()
        h = activations.get(self.activation)(c["linear1"].apply(params["linear1"], {}, x)[0])
        h = c["linear2"].apply(params["linear2"], {}, self._drop(h, k_act, train))[0]
        return self._drop(h, k_out, train)

    def _norm(self, params: Params, name: str, x: Tensor) -> Tensor:
        return LayerNorm(self.d_model, self.layer_norm_eps).apply(params[name], {}, x)[0]

    def _residual(self, params: Params, norm: str, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        """Pre-LN ``x + f(norm(x))`` or post-LN ``norm(x + f(x))``."""
        if self.norm_first:
            return x + sublayer(self._norm(params, norm, x))
        return self._norm(params, norm, x + sublayer(x))


@dataclass(frozen=True)
class TransformerEncoderLayer(_LayerBase):
    """Self-attention then feed-forward, each with a residual connection and LayerNorm.

    Fields: ``d_model, n_heads, d_ff, dropout=0.1, activation="relu", norm_first=False,
    layer_norm_eps=1e-5``. ``activation`` is a registered name or a callable.

    Twin: ``torch.nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout, activation,
    batch_first=True, norm_first=norm_first)``.
    """

    def children(self) -> dict[str, Block]:
        return {"self_attn": MultiHeadAttention(self.d_model, self.n_heads, self.dropout),
                **self._common_children(),
                "norm1": LayerNorm(self.d_model, self.layer_norm_eps),
                "norm2": LayerNorm(self.d_model, self.layer_norm_eps)}

    #: Dropout sites, in the order of their keys: attention weights, after self-attention,
    #: after the activation, after the feed-forward.
    n_keys: ClassVar[int] = 4

    def apply(self, params: Params, state: State, x: Tensor, mask: Tensor | None = None, *,
              key: Key | None = None, train: bool = False) -> tuple[Tensor, State]:
        """``x [b, t, e]`` floating, ``mask`` bool broadcastable to ``[b, h, t, t]`` -> ``[b, t, e]``.

        Dropout uses ``layer_keys(key)``: ``apply(key=k)`` equals ``apply_keyed(keys=layer_keys(k))``.
        """
        self._check_inputs(params, x, mask, "apply")
        keys = self._keys_of(key, train)
        return self._forward(params, x, mask, keys, train), state

    def apply_keyed(self, params: Params, state: State, x: Tensor, mask: Tensor | None = None, *,
                    keys: Tensor | None = None, train: bool = False) -> tuple[Tensor, State]:
        """``apply`` with the dropout keys given: ``keys`` ``int64 [n_keys, 2]``, one per site
        (needed when ``train=True`` and ``dropout > 0``, ignored otherwise)."""
        self._check_inputs(params, x, mask, "apply_keyed")
        return self._forward(params, x, mask, self._site_keys(keys, train, "apply_keyed"), train), state

    def _check_inputs(self, params: Params, x: Tensor, mask: Tensor | None, method: str) -> None:
        self._check_x("x", x, method)
        check_keys(self, params, self.children(), method=method)
        if mask is not None:
            check_mask(self, "mask", mask, (x.shape[0], self.n_heads, x.shape[1], x.shape[1]), method)

    def _forward(self, params: Params, x: Tensor, mask: Tensor | None, keys: list[Key | None],
                 train: bool) -> Tensor:
        attn = MultiHeadAttention(self.d_model, self.n_heads, self.dropout)
        k_attn, k_d1, k_act, k_d2 = keys

        def self_attention(h: Tensor) -> Tensor:
            y = attn.apply(params["self_attn"], {}, h, None, mask, key=k_attn, train=train)[0]
            return self._drop(y, k_d1, train)

        x = self._residual(params, "norm1", x, self_attention)
        return self._residual(params, "norm2", x, lambda h: self._ff(params, h, k_act, k_d2, train))


@dataclass(frozen=True)
class TransformerDecoderLayer(_LayerBase):
    """Self-attention, cross-attention over ``memory``, then feed-forward; residual + LayerNorm each.

    Fields as ``TransformerEncoderLayer``. Besides ``apply``, ``project_memory`` and
    ``decode_step`` decode incrementally: cross-attention keys/values are computed once per
    source, and self-attention keys/values of the prefix are cached.

    Twin: ``torch.nn.TransformerDecoderLayer(d_model, n_heads, d_ff, dropout, activation,
    batch_first=True, norm_first=norm_first)``.
    """

    def children(self) -> dict[str, Block]:
        return {"self_attn": self._attn(), "multihead_attn": self._attn(),
                **self._common_children(),
                **{f"norm{i}": LayerNorm(self.d_model, self.layer_norm_eps) for i in (1, 2, 3)}}

    def _attn(self) -> MultiHeadAttention:
        return MultiHeadAttention(self.d_model, self.n_heads, self.dropout)

    def project_memory(self, params: Params, memory: Tensor) -> KVCache:
        """Cross-attention keys and values of ``memory [b, s, e]``, each ``[b, h, s, d]``."""
        self._check_x("memory", memory, "project_memory")
        check_keys(self, params, self.children(), method="project_memory")
        return self._attn().project_kv(params["multihead_attn"], memory)

    def _layer(self, params: Params, x: Tensor, cache: KVCache | None, memory_kv: KVCache,
               self_mask: Tensor | None, cross_mask: Tensor | None, keys: list[Key | None],
               train: bool) -> tuple[Tensor, KVCache]:
        attn = self._attn()
        k_sa, k_d1, k_ca, k_d2, k_act, k_d3 = keys
        new_cache: list[KVCache] = []

        def self_attention(h: Tensor) -> Tensor:
            k, v = attn.project_kv(params["self_attn"], h)
            if cache is not None:  # the prefix's keys and values are reused, never recomputed
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
            new_cache.append((k, v))
            y = attn.attend(params["self_attn"], h, k, v, self_mask, key=k_sa, train=train)
            return self._drop(y, k_d1, train)

        def cross_attention(h: Tensor) -> Tensor:
            y = attn.attend(params["multihead_attn"], h, *memory_kv, cross_mask, key=k_ca, train=train)
            return self._drop(y, k_d2, train)

        x = self._residual(params, "norm1", x, self_attention)
        x = self._residual(params, "norm2", x, cross_attention)
        x = self._residual(params, "norm3", x, lambda h: self._ff(params, h, k_act, k_d3, train))
        return x, new_cache[0]

    #: Dropout sites, in the order of their keys: self-attention weights, after self-attention,
    #: cross-attention weights, after cross-attention, after the activation, after the feed-forward.
    n_keys: ClassVar[int] = 6

    def apply(self, params: Params, state: State, x: Tensor, memory: Tensor,
              self_mask: Tensor | None = None, cross_mask: Tensor | None = None, *,
              key: Key | None = None, train: bool = False) -> tuple[Tensor, State]:
        """Decode ``x [b, t, e]`` against ``memory [b, s, e]``.

        Args:
            self_mask: bool broadcastable to ``[b, h, t, t]`` (e.g. ``causal_mask(t)``).
            cross_mask: bool broadcastable to ``[b, h, t, s]`` (e.g. the source padding mask).
            key: dropout uses ``layer_keys(key)``: ``apply(key=k)`` equals
                ``apply_keyed(keys=layer_keys(k))``.

        Returns:
            ``([b, t, e], state)``.
        """
        self._check_inputs(params, x, memory, self_mask, cross_mask, "apply")
        return self._forward(params, x, memory, self_mask, cross_mask, self._keys_of(key, train), train), state

    def apply_keyed(self, params: Params, state: State, x: Tensor, memory: Tensor,
                    self_mask: Tensor | None = None, cross_mask: Tensor | None = None, *,
                    keys: Tensor | None = None, train: bool = False) -> tuple[Tensor, State]:
        """``apply`` with the dropout keys given: ``keys`` ``int64 [n_keys, 2]``, one per site
        (needed when ``train=True`` and ``dropout > 0``, ignored otherwise)."""
        self._check_inputs(params, x, memory, self_mask, cross_mask, "apply_keyed")
        site_keys = self._site_keys(keys, train, "apply_keyed")
        return self._forward(params, x, memory, self_mask, cross_mask, site_keys, train), state

    def _forward(self, params: Params, x: Tensor, memory: Tensor, self_mask: Tensor | None,
                 cross_mask: Tensor | None, keys: list[Key | None], train: bool) -> Tensor:
        memory_kv = self._attn().project_kv(params["multihead_attn"], memory)
        return self._layer(params, x, None, memory_kv, self_mask, cross_mask, keys, train)[0]

    def _check_inputs(self, params: Params, x: Tensor, memory: Tensor, self_mask: Tensor | None,
                      cross_mask: Tensor | None, method: str) -> None:
        self._check_x("x", x, method)
        self._check_x("memory", memory, method)
        check_keys(self, params, self.children(), method=method)
        check_same_dtype(self, "memory", memory, x.dtype, "x", method=method)
        b, t, _ = x.shape
        if memory.shape[0] != b:
            raise ValueError(f"{where(self, method)}: memory must have x's batch size {b}; got {describe(memory)}")
        if self_mask is not None:
            check_mask(self, "self_mask", self_mask, (b, self.n_heads, t, t), method)
        if cross_mask is not None:
            check_mask(self, "cross_mask", cross_mask, (b, self.n_heads, t, memory.shape[1]), method)

    def decode_step(self, params: Params, x: Tensor, memory_kv: KVCache, cache: KVCache | None = None,
                    self_mask: Tensor | None = None, cross_mask: Tensor | None = None, *,
                    key: Key | None = None, train: bool = False) -> tuple[Tensor, KVCache]:
        """Decode ``t`` new positions after a cached prefix of length ``p``.

        Self-attention is causal over prefix and new positions (new position ``i`` sees
        keys ``0 .. p + i``); ``self_mask`` further restricts it (e.g. padded prefix keys).
        Step by step from ``cache=None`` this equals ``apply`` with ``causal_mask``.

        Args:
            x: ``[b, t, e]`` the new positions.
            memory_kv: ``project_memory(params, memory)``, each ``[b, h, s, d]``.
            cache: ``(k, v)`` of the prefix, each ``[b, h, p, d]``, or ``None`` (empty prefix).
            self_mask: bool broadcastable to ``[b, h, t, p + t]``.
            cross_mask: bool broadcastable to ``[b, h, t, s]``.

        Returns:
            ``(y [b, t, e], cache)`` with the cache grown to length ``p + t``.
        """
        self._check_x("x", x, "decode_step")
        check_keys(self, params, self.children(), method="decode_step")
        b, t, _ = x.shape
        h, d = self.n_heads, self.d_model // self.n_heads
        pairs = [("memory_kv", memory_kv)] + ([("cache", cache)] if cache is not None else [])
        for name, pair in pairs:
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(z, torch.Tensor) for z in pair)
                    and all(z.ndim == 4 and (z.shape[0], z.shape[1], z.shape[3]) == (b, h, d) for z in pair)
                    and pair[0].shape == pair[1].shape and all(z.dtype == x.dtype for z in pair)):
                got = [describe(z) for z in pair] if isinstance(pair, tuple) else describe(pair)
                raise ValueError(f"{where(self, 'decode_step')}: {name} must be a (k, v) tuple of {x.dtype} "
                                 f"[{b}, {h}, L, {d}] tensors; got {got}")
        p = 0 if cache is None else cache[0].shape[2]
        if self_mask is not None:
            check_mask(self, "self_mask", self_mask, (b, h, t, p + t), "decode_step")
        if cross_mask is not None:
            check_mask(self, "cross_mask", cross_mask, (b, h, t, memory_kv[0].shape[2]), "decode_step")
        pos = torch.arange(p + t, device=x.device)
        causal = pos[None, :] <= pos[p:, None]
        keys = self._keys_of(key, train)
        return self._layer(params, x, cache, memory_kv, combine(causal, self_mask), cross_mask, keys, train)

"""Decoder-only Transformer language model: GPT-2's architecture (Radford et al., 2019).

Token and learned position embeddings, ``n_layers`` pre-LN blocks (causal self-attention,
then a GELU-tanh feed-forward, each ``x + f(LayerNorm(x))``), a final LayerNorm and a
projection to the vocabulary, tied to the token embedding by default.

Besides ``apply`` (teacher-forced logits of a whole sequence), :meth:`GPT.prefill` and
:meth:`GPT.decode_step` run it incrementally over a key/value cache of fixed size
``[n_layers, 2, b, h, max_len, d]``: the keys and values of position ``p`` are written at
index ``p`` (by a position tensor) and attention is masked to the positions ``<= p``. All
steps thus have the same shapes, so one compiled ``decode_step`` serves every position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import random, tree
from .._checks import (
    check_choice,
    check_integer,
    check_keys,
    check_positive,
    check_probability,
    check_rank,
    describe,
    require_key,
    where,
)
from .._torch import plain_eager
from ..nn import activations, initializers
from ..nn.block import init_children
from ..nn.dense import Dense
from ..nn.dropout import dropout as _dropout
from ..nn.embedding import Embedding
from ..nn.layer_norm import LayerNorm
from ..nn.masks import causal_mask
from ..nn.transformer import TransformerEncoderLayer
from ..train.remat import remat as rematerialise
from ..typing import Block, Key, Params, State, Tensor
from ._checks import check_token_ids
from .transformer import _Stack

__all__ = ["GPT"]

#: GPT-2's initialisation: weights ``N(0, 0.02^2)``, the residual projections scaled down.
_STD = 0.02


@dataclass(frozen=True)
class GPT:
    """GPT-2: ``ids [b, t]`` integer ids -> next-token logits ``[b, t, vocab_size]``.

    Params (flat names): ``wte.weight [vocab_size, d_model]`` (token embedding; with
    ``tie_embeddings`` also the output projection, one leaf used twice), ``wpe.weight
    [max_len, d_model]`` (positions), ``layers.<i>.*`` with the names of
    ``torch.nn.TransformerEncoderLayer`` (``self_attn.in_proj_weight [3e, e]``, ...,
    ``linear1``, ``linear2``, ``norm1``, ``norm2``), ``ln_f.*`` and, untied only,
    ``lm_head.weight [vocab_size, d_model]`` (no bias). ``state`` is ``{}``.

    Initialised as GPT-2: embeddings and weight matrices ``N(0, 0.02^2)``, the two residual
    projections of each layer (``self_attn.out_proj.weight``, ``linear2.weight``)
    ``N(0, (0.02 / sqrt(2 n_layers))^2)``, biases zero, LayerNorms one and zero; a fresh
    model's loss starts near ``ln(vocab_size)``.

    Args:
        vocab_size: the number of token ids.
        max_len: the most positions (the size of ``wpe`` and of the decoding cache).
        d_model, n_layers, n_heads: width, depth and heads (``d_model % n_heads == 0``).
        d_ff: the feed-forward width; ``None`` means ``4 * d_model``.
        dropout: after the embeddings, on attention weights, after each sub-block and
            after the feed-forward activation (``TransformerEncoderLayer``'s placements;
            GPT-2 has no dropout after the activation). ``train=True`` then needs ``key``,
            from which ``apply`` cuts every dropout key of the call with one
            ``random.split(key, 1 + 4 n_layers)`` (the embedding's, then 4 per layer).
        tie_embeddings: project to the vocabulary with ``wte.weight`` (GPT-2) or with a
            separate ``lm_head.weight``.
        layer_norm_eps: every LayerNorm's epsilon.
        remat: in training, wrap each layer in :func:`deepfn.remat` (same values and
            gradients, activations recomputed in the backward pass instead of kept).

    Twin: ``transformers.GPT2LMHeadModel`` (``interop.from_torch`` converts, transposing its
    ``Conv1D`` weights); with ``dropout=0`` the logits agree to float32 rounding.
    """

    vocab_size: int
    max_len: int = 1024
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int | None = None
    dropout: float = 0.0
    tie_embeddings: bool = True
    layer_norm_eps: float = 1e-5
    remat: bool = False

    def __post_init__(self) -> None:
        check_positive(self, vocab_size=self.vocab_size, max_len=self.max_len, d_model=self.d_model,
                       n_layers=self.n_layers, n_heads=self.n_heads)
        if self.d_ff is not None:
            check_positive(self, d_ff=self.d_ff)
        if self.d_model % self.n_heads:
            raise ValueError(f"GPT: d_model must be divisible by n_heads; got d_model={self.d_model}, "
                             f"n_heads={self.n_heads}")
        check_probability(self, "dropout", self.dropout)
        for name in ("tie_embeddings", "remat"):
            check_choice(self, name, getattr(self, name), (True, False))
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"GPT: layer_norm_eps must be a float > 0; got {eps!r}")

    # -- structure -------------------------------------------------------------------------

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def layer(self) -> TransformerEncoderLayer:
        """One block: pre-LN self-attention and GELU-tanh feed-forward."""
        return TransformerEncoderLayer(self.d_model, self.n_heads, self.d_ff or 4 * self.d_model,
                                       dropout=self.dropout, activation="gelu_tanh", norm_first=True,
                                       layer_norm_eps=self.layer_norm_eps)

    def children(self) -> dict[str, Block]:
        out: dict[str, Block] = {
            "wte": Embedding(self.vocab_size, self.d_model),
            "wpe": Embedding(self.max_len, self.d_model),
            "layers": _Stack(self.layer, self.n_layers),
            "ln_f": LayerNorm(self.d_model, self.layer_norm_eps),
        }
        if not self.tie_embeddings:
            out["lm_head"] = Dense(self.d_model, self.vocab_size, bias=False)
        return out

    def init(self, key: Key) -> tuple[Params, State]:
        """GPT-2's initialisation (see the class docstring); ``state`` is ``{}``."""
        k_children, k_normal = random.split(key)
        params, state = init_children(self.children(), k_children)   # the tree's structure
        flat = tree.flatten(params)
        keys = random.split(k_normal, len(flat)).unbind(0)
        residual_std = _STD / math.sqrt(2 * self.n_layers)
        new = {}
        for (name, p), k in zip(flat.items(), keys, strict=True):
            if name.startswith("ln_f.") or ".norm" in name:
                new[name] = p                                        # ones and zeros
            elif name.endswith("bias"):
                new[name] = torch.zeros_like(p)
            elif name.endswith(("self_attn.out_proj.weight", "linear2.weight")):
                new[name] = initializers.normal(residual_std)(k, tuple(p.shape), p.dtype)
            else:
                new[name] = initializers.normal(_STD)(k, tuple(p.shape), p.dtype)
        return tree.unflatten(new), state

    # -- checks ----------------------------------------------------------------------------

    def check_ids(self, name: str, ids: Tensor, method: str) -> None:
        """Dtype, rank and length (``1 .. max_len``) from metadata; the id range by value,
        eagerly only (:func:`deepfn.models._checks.check_token_ids`)."""
        check_token_ids(self, name, ids, method, vocab_size=self.vocab_size, max_len=self.max_len,
                        max_len_name="max_len")

    def _check_params(self, params: Params, method: str) -> None:
        check_keys(self, params, self.children(), method=method)
        check_keys(self, params["layers"], map(str, range(self.n_layers)), name="params['layers']",
                   method=method)

    # -- the full forward ------------------------------------------------------------------

    def embed(self, params: Params, ids: Tensor, positions: Tensor) -> Tensor:
        """``wte[ids] + wpe[positions]``: ``ids [b, t]``, ``positions [t]`` -> ``[b, t, e]``."""
        x = Embedding(self.vocab_size, self.d_model).apply(params["wte"], {}, ids)[0]
        return x + F.embedding(positions, params["wpe"]["weight"])

    def logits(self, params: Params, x: Tensor) -> Tensor:
        """The final LayerNorm and the vocabulary projection: ``[..., e]`` -> ``[..., v]``."""
        x = LayerNorm(self.d_model, self.layer_norm_eps).apply(params["ln_f"], {}, x)[0]
        head = params["wte"] if self.tie_embeddings else params["lm_head"]
        return F.linear(x, head["weight"])

    def apply(self, params: Params, state: State, ids: Tensor, *, key: Key | None = None,
              train: bool = False) -> tuple[Tensor, State]:
        """Next-token logits of every position.

        Args:
            ids: ``[b, t]`` integer ids (int64), ``1 <= t <= max_len``, in ``[0, vocab_size)``.
            key: dropout key; needed when ``train=True`` and ``dropout > 0``.

        Returns:
            ``(logits [b, t, vocab_size], state)`` in the params' dtype; ``state`` unchanged.

        Raises:
            TypeError: ``ids`` not integer.
            ValueError: ``ids`` not 2-d, longer than ``max_len``, an id outside the vocabulary
                (eagerly), params of another model, or ``train=True`` with dropout and no key.
        """
        self.check_ids("ids", ids, "apply")
        self._check_params(params, "apply")
        drop = train and self.dropout > 0.0
        if drop:
            require_key(self, key)
        layer = self.layer
        # Every dropout key of the call from ONE split (the embedding's, then n_keys rows per
        # layer): one cipher evaluation, one small loop in compiled code, not a kernel per split.
        keys = random.split(key, 1 + self.n_layers * layer.n_keys) if drop else None
        t = ids.shape[1]
        x = self.embed(params, ids, torch.arange(t, device=ids.device))
        x = _dropout(x, self.dropout, None if keys is None else keys[0], train, owner=self)
        mask = causal_mask(t, device=ids.device)

        def run(p: Params, h: Tensor, m: Tensor, k: Tensor | None) -> Tensor:
            return layer.apply_keyed(p, {}, h, m, keys=k, train=train)[0]
        if self.remat and train:   # only training differentiates; evaluation keeps the plain call
            run = rematerialise(run)
        k_layers = None if keys is None else keys[1:]
        for i in range(self.n_layers):
            x = run(params["layers"][str(i)], x, mask, layer.stack_rows(k_layers, i))
        return self.logits(params, x), state

    # -- incremental decoding over a fixed-size cache ----------------------------------------

    def init_cache(self, batch: int, dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None) -> Tensor:
        """An empty cache: zeros ``[n_layers, 2, batch, n_heads, max_len, head_dim]`` (keys, values)."""
        check_positive(self, batch=batch)
        shape = (self.n_layers, 2, batch, self.n_heads, self.max_len, self.head_dim)
        return torch.zeros(shape, dtype=dtype, device=device)

    def _check_cache(self, cache: Tensor, batch: int, like: Tensor, method: str) -> None:
        shape = (self.n_layers, 2, batch, self.n_heads, self.max_len, self.head_dim)
        if not isinstance(cache, torch.Tensor) or tuple(cache.shape) != shape or cache.dtype != like.dtype:
            want = f"{str(like.dtype).removeprefix('torch.')} [{', '.join(map(str, shape))}]"
            raise ValueError(f"{where(self, method)}: cache must be {want} [n_layers, 2, B, n_heads, max_len, "
                             f"head_dim] (from init_cache); got {describe(cache)}")

    def _cached_layer(self, p: Params, x: Tensor, kv: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """One pre-LN block over ``x [b, t, e]`` at ``positions [t]``; ``kv [2, b, h, L, d]``
        is this layer's cache, returned with the new keys and values written in."""
        layer = self.layer
        c = layer.children()
        attn = c["self_attn"]
        h = c["norm1"].apply(p["norm1"], {}, x)[0]
        k, v = attn.project_kv(p["self_attn"], h)
        kv = kv.index_copy(3, positions, torch.stack([k, v]))   # out of place: the input stays intact
        slots = torch.arange(self.max_len, device=x.device)
        mask = (slots[None, :] <= positions[:, None])[None, None]   # [1, 1, t, max_len]
        x = x + attn.attend(p["self_attn"], h, kv[0], kv[1], mask)
        h = c["norm2"].apply(p["norm2"], {}, x)[0]
        h = activations.get("gelu_tanh")(c["linear1"].apply(p["linear1"], {}, h)[0])
        return x + c["linear2"].apply(p["linear2"], {}, h)[0], kv

    def _cached_forward(self, params: Params, ids: Tensor, cache: Tensor, start: Tensor) -> tuple[Tensor, Tensor]:
        positions = start + torch.arange(ids.shape[1], device=ids.device)
        x = self.embed(params, ids, positions)
        layers = []
        for i in range(self.n_layers):
            x, kv = self._cached_layer(params["layers"][str(i)], x, cache[i], positions)
            layers.append(kv)
        return x, torch.stack(layers)

    def _position(self, pos: int | Tensor, device: torch.device, method: str) -> Tensor:
        if isinstance(pos, torch.Tensor):
            if pos.ndim != 0 or pos.is_floating_point() or pos.is_complex() or pos.dtype == torch.bool:
                raise TypeError(f"{where(self, method)}: pos must be an int or a 0-d integer tensor; "
                                f"got {describe(pos)}")
            return pos.to(device=device, dtype=torch.int64)
        if isinstance(pos, bool) or not isinstance(pos, int):
            raise TypeError(f"{where(self, method)}: pos must be an int or a 0-d integer tensor; got {describe(pos)}")
        return torch.tensor(pos, dtype=torch.int64, device=device)

    def prefill(self, params: Params, ids: Tensor, cache: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Run a prompt from position 0, filling the cache.

        Args:
            ids: ``[b, t]`` integer ids, ``1 <= t <= max_len``.
            cache: an empty cache (``init_cache``); ``None`` makes one.

        Returns:
            ``(logits [b, vocab_size] of the last position, cache)`` holding positions ``0 .. t-1``.
        """
        self.check_ids("ids", ids, "prefill")
        self._check_params(params, "prefill")
        dtype = params["wte"]["weight"].dtype
        if cache is None:
            cache = self.init_cache(ids.shape[0], dtype, ids.device)
        self._check_cache(cache, ids.shape[0], params["wte"]["weight"], "prefill")
        x, cache = self._cached_forward(params, ids, cache, ids.new_zeros((), dtype=torch.int64))
        return self.logits(params, x[:, -1]), cache

    def decode_step(self, params: Params, token: Tensor, cache: Tensor, pos: int | Tensor) -> tuple[Tensor, Tensor]:
        """Logits after one more token, reusing the cached keys and values of positions ``< pos``.

        Args:
            token: ``[b]`` integer ids, the token at position ``pos``.
            cache: ``[n_layers, 2, b, n_heads, max_len, head_dim]`` holding positions ``< pos``.
            pos: the position, ``0 <= pos < max_len``: a 0-d int64 tensor (one compiled step
                then serves every position) or an int.

        Returns:
            ``(logits [b, vocab_size], cache)`` with position ``pos`` written; the input cache
            is not modified. Equal to ``apply(ids[:, :pos + 1])[:, pos]`` to float32 rounding.
        """
        check_integer(self, "token", token, "decode_step")
        check_rank(self, "token", token, 1, layout="[B] of token ids", method="decode_step")
        self._check_params(params, "decode_step")
        self._check_cache(cache, token.shape[0], params["wte"]["weight"], "decode_step")
        start = self._position(pos, token.device, "decode_step")
        if plain_eager([start, token]):
            if not 0 <= int(start) < self.max_len:
                raise ValueError(f"{where(self, 'decode_step')}: pos must lie in [0, {self.max_len}) (max_len); "
                                 f"got {int(start)}")
            self.check_ids("token", token[:, None], "decode_step")
        x, cache = self._cached_forward(params, token[:, None], cache, start)
        return self.logits(params, x[:, 0]), cache

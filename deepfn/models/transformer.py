"""Encoder-decoder Transformer (Vaswani et al., 2017) with cross-attention and generation.

Twin: the seed's ``Transformer`` with its missing cross-attention added, or equivalently a
stack of ``torch.nn.Embedding`` + sinusoidal positions + ``torch.nn.TransformerEncoder`` /
``TransformerDecoder`` (``batch_first=True``) + ``torch.nn.Linear``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F

from .. import random, tree
from .._checks import (
    check_choice,
    check_keys,
    check_params,
    check_positive,
    check_probability,
    check_rank,
    describe,
    require_key,
    where,
)
from ..nn import activations, initializers
from ..nn._linear import linear
from ..nn.block import init_children
from ..nn.dense import Dense
from ..nn.dropout import dropout
from ..nn.embedding import Embedding
from ..nn.layer_norm import LayerNorm
from ..nn.masks import causal_mask, padding_mask
from ..nn.positional import PositionalEncoding
from ..nn.transformer import TransformerDecoderLayer, TransformerEncoderLayer
from ..train.remat import remat as rematerialise
from ..typing import Key, Params, State, Tensor
from . import decoding
from ._checks import check_token_ids

__all__ = ["Transformer"]


@dataclass(frozen=True)
class Transformer:
    """Sequence-to-sequence Transformer: ``src [b, s]``, ``tgt [b, t]`` ids -> logits ``[b, t, v]``.

    Embeddings are scaled by ``sqrt(d_model)``, the sinusoidal table is added and dropout
    follows; then ``n_layers`` encoder layers and ``n_layers`` decoder layers (self-attention,
    cross-attention to the encoder memory, feed-forward) and a projection to the vocabulary.
    Pre-LN stacks (``norm_first=True``) end each stack with a ``LayerNorm``. Masks come from
    ``pad_token_id``: source padding for encoder self-attention and cross-attention, causality
    plus target padding for decoder self-attention.

    Params (flat names): ``embedding.weight`` (shared by source, target and, with
    ``tie_output``, the output projection; one leaf used in every place) or
    ``src_embedding.weight`` + ``tgt_embedding.weight``; ``encoder.layers.<i>.*`` and
    ``decoder.layers.<i>.*`` with ``torch.nn.TransformerEncoderLayer`` / ``DecoderLayer``
    names; ``encoder.norm.*``, ``decoder.norm.*`` (pre-LN only); ``output_layer.weight``,
    ``output_layer.bias`` (absent with ``tie_output``, whose projection has no bias).
    Matrices start xavier-uniform (the seed's ``init_weights``), vectors as the layers
    initialise them. ``state`` is always ``{}``.

    Dropout keys: ``apply(key=k)`` cuts every key of the call from one ``random.split(k,
    2 + 10 n_layers)`` (the source embedding's, 4 per encoder layer, the target embedding's,
    6 per decoder layer, in that order; each layer gets its rows through ``apply_keyed``);
    ``encode`` from ``split(k, 1 + 4 n_layers)``, ``decode`` from ``split(k, 1 + 6 n_layers)``.

    Args:
        vocab_size, d_model, n_heads, n_layers, d_ff, dropout, max_seq_len, pad_token_id: the
            seed's ``TransformerConfig`` (``n_layers`` encoder and ``n_layers`` decoder layers).
        share_embeddings: one embedding table for source and target (default) or two.
        tie_output: project to the vocabulary with the (target) embedding table, no bias.
        norm_first: pre-LN layers plus a final LayerNorm per stack; default post-LN.
        activation: the feed-forward activation, a registered name or a callable.
        remat: in training (``train=True``), wrap each encoder and decoder layer in
            :func:`deepfn.remat`: the backward pass recomputes a layer's activations from its
            input instead of keeping them (same values and gradients, less memory, one more
            forward per layer). Evaluation and generation run the plain layers.

    Twin: see the module docstring; the seed omits the ``sqrt(d_model)`` scale.
    """

    vocab_size: int = 10000
    d_model: int = 512
    n_heads: int = 8
    n_layers: int = 6
    d_ff: int = 2048
    dropout: float = 0.1
    max_seq_len: int = 512
    pad_token_id: int = 0
    share_embeddings: bool = True
    tie_output: bool = False
    norm_first: bool = False
    activation: str | Callable[[Tensor], Tensor] = "relu"
    remat: bool = False

    def __post_init__(self) -> None:
        check_positive(self, vocab_size=self.vocab_size, d_model=self.d_model, n_heads=self.n_heads,
                       n_layers=self.n_layers, d_ff=self.d_ff, max_seq_len=self.max_seq_len)
        check_probability(self, "dropout", self.dropout)
        if self.d_model % self.n_heads:
            raise ValueError(f"Transformer: d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        pad = self.pad_token_id
        if isinstance(pad, bool) or not isinstance(pad, int) or not 0 <= pad < self.vocab_size:
            raise ValueError(f"Transformer: pad_token_id must be an int in [0, {self.vocab_size}) (vocab_size); got {pad!r}")
        for name in ("share_embeddings", "tie_output", "norm_first", "remat"):
            check_choice(self, name, getattr(self, name), (True, False))
        activations.get(self.activation)      # an unknown name raises here, at construction

    # -- structure -------------------------------------------------------------------------

    def _layer_args(self) -> dict:
        return dict(d_model=self.d_model, n_heads=self.n_heads, d_ff=self.d_ff, dropout=self.dropout,
                    activation=self.activation, norm_first=self.norm_first)

    @property
    def encoder_layer(self) -> TransformerEncoderLayer:
        return TransformerEncoderLayer(**self._layer_args())

    @property
    def decoder_layer(self) -> TransformerDecoderLayer:
        return TransformerDecoderLayer(**self._layer_args())

    @property
    def positional(self) -> PositionalEncoding:
        return PositionalEncoding(self.d_model, self.max_seq_len)

    def _stack(self, layer) -> dict:
        children = {"layers": _Stack(layer, self.n_layers)}
        if self.norm_first:
            children["norm"] = LayerNorm(self.d_model)
        return children

    def children(self) -> dict:
        emb = Embedding(self.vocab_size, self.d_model)
        out = {"embedding": emb} if self.share_embeddings else {"src_embedding": emb, "tgt_embedding": emb}
        out["encoder"] = _Group(self._stack(self.encoder_layer))
        out["decoder"] = _Group(self._stack(self.decoder_layer))
        if not self.tie_output:
            out["output_layer"] = Dense(self.d_model, self.vocab_size)
        return out

    def init(self, key: Key) -> tuple[Params, State]:
        k_children, k_xavier = random.split(key)
        params, state = init_children(self.children(), k_children)
        flat = tree.flatten(params)
        keys = random.split(k_xavier, len(flat))
        xavier = initializers.xavier_uniform()
        flat = {name: xavier(k, tuple(p.shape), p.dtype) if p.ndim > 1 else p
                for (name, p), k in zip(flat.items(), keys.unbind(0), strict=True)}
        return tree.unflatten(flat), state

    def _embedding(self, params: Params, side: str) -> Tensor:
        return params["embedding" if self.share_embeddings else f"{side}_embedding"]["weight"]

    # -- input checks ----------------------------------------------------------------------

    def check_tokens(self, name: str, x: Tensor, method: str) -> None:
        """Dtype, rank and length (``1 .. max_seq_len``) from metadata; the id range by value,
        eagerly only (:func:`deepfn.models._checks.check_token_ids`)."""
        check_token_ids(self, name, x, method, vocab_size=self.vocab_size, max_len=self.max_seq_len,
                        max_len_name="max_seq_len")

    def check_params_tree(self, params: Params, method: str) -> None:
        """The key sets of the whole tree (each layer checks its own leaves when it runs)."""
        check_keys(self, params, self.children(), method=method)
        for side in ("encoder", "decoder"):
            group = params[side]
            check_keys(self, group, ("layers", "norm") if self.norm_first else ("layers",),
                       name=f"params[{side!r}]", method=method)
            check_keys(self, group["layers"], map(str, range(self.n_layers)),
                       name=f"params[{side!r}]['layers']", method=method)

    def _check_batch(self, method: str, **named: Tensor) -> None:
        sizes = {n: x.shape[0] for n, x in named.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"{where(self, method)}: batch sizes must agree; got {sizes}")

    # -- forward ---------------------------------------------------------------------------

    def embed(self, params: Params, tokens: Tensor, *, offset: int = 0, key: Key | None = None,
              train: bool = False, side: str = "tgt") -> Tensor:
        """``tokens [b, t]`` -> ``emb * sqrt(d_model) + pe[offset:offset+t]``, dropped out."""
        table = Embedding(self.vocab_size, self.d_model)
        x = table.apply({"weight": self._embedding(params, side)}, {}, tokens)[0] * math.sqrt(self.d_model)
        pe = self.positional.table(offset + tokens.shape[1], dtype=x.dtype, device=x.device)[offset:]
        return dropout(x + pe, self.dropout, key, train, owner=self)

    def final_norm(self, stack_params: Params, x: Tensor) -> Tensor:
        """The LayerNorm closing a pre-LN stack (``params["encoder"]`` or ``["decoder"]``); else identity."""
        if not self.norm_first:
            return x
        return LayerNorm(self.d_model).apply(stack_params["norm"], {}, x)[0]

    def logits(self, params: Params, x: Tensor) -> Tensor:
        """Decoder output ``[..., e]`` -> ``[..., v]``."""
        if not self.tie_output:
            check_params(self, params["output_layer"], self.children()["output_layer"].param_shapes,
                         like=x, name="params['output_layer']", method="logits")
        if self.tie_output:
            return F.linear(x, self._embedding(params, "tgt"))
        return linear(x, params["output_layer"]["weight"], params["output_layer"]["bias"])

    # -- dropout keys: one derivation per call --------------------------------------------

    def _n_keys(self, side: str) -> int:
        """Dropout keys of one stack: the embedding's, then each layer's ``n_keys`` rows."""
        layer = self.encoder_layer if side == "src" else self.decoder_layer
        return 1 + self.n_layers * layer.n_keys

    def _stack_keys(self, key: Key | None, train: bool, sides: tuple[str, ...]) -> list[Tensor | None]:
        """Every dropout key of ``sides`` (``"src"``: the encoder, ``"tgt"``: the decoder) from
        ONE ``random.split(key, n)``: one cipher evaluation over ``n`` counters (one small loop
        in compiled code) instead of a tree of splits (a kernel each). One ``int64 [n_i, 2]``
        block per side, rows in :meth:`_n_keys`'s order; ``None`` per side without dropout."""
        if not (train and self.dropout > 0.0):
            return [None] * len(sides)
        sizes = [self._n_keys(side) for side in sides]
        return list(random.split(key, sum(sizes)).split(sizes))

    def _encode(self, params, src, keys, train):
        k_emb, k_layers = (None, None) if keys is None else (keys[0], keys[1:])
        x = self.embed(params, src, key=k_emb, train=train, side="src")
        mask = padding_mask(src, self.pad_token_id)
        enc, layer = params["encoder"], self.encoder_layer

        def run(p: Params, h: Tensor, m: Tensor, k: Tensor | None) -> Tensor:
            return layer.apply_keyed(p, {}, h, m, keys=k, train=train)[0]
        run = self._maybe_remat(run, train)
        for i in range(self.n_layers):
            x = run(enc["layers"][str(i)], x, mask, layer.stack_rows(k_layers, i))
        return self.final_norm(enc, x)

    def _maybe_remat(self, fn: Callable, train: bool) -> Callable:
        # Only training differentiates; eval and generation keep the plain (cheaper) call.
        return rematerialise(fn) if self.remat and train else fn

    def _decode(self, params, tgt, memory, src, keys, train):
        k_emb, k_layers = (None, None) if keys is None else (keys[0], keys[1:])
        x = self.embed(params, tgt, key=k_emb, train=train)
        self_mask = causal_mask(tgt.shape[1], device=tgt.device) & padding_mask(tgt, self.pad_token_id)
        cross_mask = padding_mask(src, self.pad_token_id)
        dec, layer = params["decoder"], self.decoder_layer

        def run(p: Params, h: Tensor, mem: Tensor, sm: Tensor, cm: Tensor, k: Tensor | None) -> Tensor:
            return layer.apply_keyed(p, {}, h, mem, sm, cm, keys=k, train=train)[0]
        run = self._maybe_remat(run, train)
        for i in range(self.n_layers):
            x = run(dec["layers"][str(i)], x, memory, self_mask, cross_mask, layer.stack_rows(k_layers, i))
        return self.logits(params, self.final_norm(dec, x))

    def encode(self, params: Params, state: State, src: Tensor, *, key: Key | None = None,
               train: bool = False) -> tuple[Tensor, State]:
        """Encoder memory: ``src [b, s]`` integer ids -> ``([b, s, e], state)``.

        Raises:
            TypeError: ``src`` is not an integer tensor.
            ValueError: wrong rank, more than ``max_seq_len`` positions, ids outside the vocabulary,
                or ``train=True`` without a key.
        """
        self.check_tokens("src", src, "encode")
        self.check_params_tree(params, "encode")
        if train and self.dropout > 0:
            require_key(self, key)
        return self._encode(params, src, *self._stack_keys(key, train, ("src",)), train), state

    def decode(self, params: Params, state: State, tgt: Tensor, memory: Tensor, src: Tensor, *,
               key: Key | None = None, train: bool = False) -> tuple[Tensor, State]:
        """Logits ``[b, t, v]`` for ``tgt [b, t]`` given ``memory [b, s, e]`` of ``src [b, s]``.

        ``src`` only supplies the cross-attention padding mask, so
        ``decode(encode(src), tgt, src)`` equals ``apply(src, tgt)``.
        """
        self.check_tokens("tgt", tgt, "decode")
        self.check_tokens("src", src, "decode")
        check_rank(self, "memory", memory, 3, layout="[B, S, d_model]", method="decode")
        if tuple(memory.shape) != (src.shape[0], src.shape[1], self.d_model):
            raise ValueError(f"{where(self, 'decode')}: memory must be [{src.shape[0]}, {src.shape[1]}, "
                             f"{self.d_model}] (src's [B, S], d_model); got {describe(memory)}")
        self._check_batch("decode", tgt=tgt, src=src)
        self.check_params_tree(params, "decode")
        if train and self.dropout > 0:
            require_key(self, key)
        return self._decode(params, tgt, memory, src, *self._stack_keys(key, train, ("tgt",)), train), state

    def apply(self, params: Params, state: State, src: Tensor, tgt: Tensor, *, key: Key | None = None,
              train: bool = False) -> tuple[Tensor, State]:
        """Teacher-forced logits: ``src [b, s]``, ``tgt [b, t]`` integer ids -> ``([b, t, v], state)``.

        Raises:
            TypeError: non-integer ids.
            ValueError: wrong rank, different batch sizes, more than ``max_seq_len`` positions,
                ids outside ``[0, vocab_size)``, or ``train=True`` with dropout and no key.
        """
        self.check_tokens("src", src, "apply")
        self.check_tokens("tgt", tgt, "apply")
        self._check_batch("apply", src=src, tgt=tgt)
        self.check_params_tree(params, "apply")
        if train and self.dropout > 0:
            require_key(self, key)
        k_enc, k_dec = self._stack_keys(key, train, ("src", "tgt"))
        memory = self._encode(params, src, k_enc, train)
        return self._decode(params, tgt, memory, src, k_dec, train), state

    # -- generation (eager Python loops; each step's compute may be compiled) ---------------

    def greedy_decode(self, params: Params, state: State, src: Tensor, max_len: int, bos_id: int = 1,
                      eos_id: int = 2) -> Tensor:
        """Greedy generation with a key/value cache; see :func:`deepfn.models.decoding.greedy_decode`."""
        return decoding.greedy_decode(self, params, state, src, max_len, bos_id=bos_id, eos_id=eos_id)

    def beam_search(self, params: Params, state: State, src: Tensor, max_len: int, beam_size: int = 4,
                    length_penalty: float = 1.0, bos_id: int = 1, eos_id: int = 2) -> Tensor:
        """Beam search with a key/value cache; see :func:`deepfn.models.decoding.beam_search`."""
        return decoding.beam_search(self, params, state, src, max_len, beam_size=beam_size,
                                    length_penalty=length_penalty, bos_id=bos_id, eos_id=eos_id)


@dataclass(frozen=True)
class _Stack:
    """``n`` copies of one layer config, params under ``"0" .. "n-1"`` (a ``ModuleList``)."""

    layer: object
    n: int

    def init(self, key: Key) -> tuple[Params, State]:
        return init_children({str(i): self.layer for i in range(self.n)}, key)


@dataclass(frozen=True)
class _Group:
    """A named group of children (``encoder``: ``layers`` + ``norm``), for ``init`` only."""

    members: dict

    def init(self, key: Key) -> tuple[Params, State]:
        return init_children(self.members, key)

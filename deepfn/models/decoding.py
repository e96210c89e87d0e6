"""Autoregressive generation for :class:`deepfn.models.Transformer`: greedy and beam search.

Both run eagerly: a Python loop with a data-dependent stop (every row emitted EOS), so they
are not compiled as a whole and not meant for ``grad``/``vmap``. Each step's compute,
:func:`decode_step`, is a pure function of tensors that can be compiled on its own.

Key/value cache: for every decoder layer, the cross-attention keys and values of the
encoder memory are projected once (:func:`init_cache`); the self-attention keys and values
of the prefix grow by one position per step (concatenation) and are never recomputed.
Beam search reorders the cache by beam index after each step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .._checks import where
from ..nn._einops import rearrange
from ..nn.masks import padding_mask
from ..typing import Params, State, Tensor

__all__ = [
    "init_cache", "decode_step", "reorder_cache", "greedy_decode", "beam_search",
    "length_normalizer",
]

#: Per decoder layer: ``{"self": (k, v) [b, h, t, d] or None, "cross": (k, v) [b, h, s, d]}``.
Cache = list[dict[str, Any]]


def init_cache(model, params: Params, memory: Tensor) -> Cache:
    """Project the encoder memory ``[b, s, e]`` to each decoder layer's cross-attention k/v, once."""
    layer = model.decoder_layer
    layers = params["decoder"]["layers"]
    return [{"self": None, "cross": layer.project_memory(layers[str(i)], memory)} for i in range(model.n_layers)]


def decode_step(model, params: Params, tokens: Tensor, cache: Cache, cross_mask: Tensor) -> tuple[Tensor, Cache]:
    """One decoding step: logits ``[b, v]`` for the last position of ``tokens [b, t]``.

    Only the last token is embedded and run through the decoder; the earlier positions'
    self-attention keys/values come from ``cache`` (which holds ``t - 1`` positions), so
    this equals the last row of ``model.decode`` on the whole prefix, padding masks included.

    Args:
        tokens: ``[b, t]`` the prefix, BOS first.
        cache: from :func:`init_cache` or the previous step.
        cross_mask: bool ``[b, 1, 1, s]`` padding mask of the source.

    Returns:
        ``(logits [b, v], new cache)``; the input cache is not modified.
    """
    t = tokens.shape[1]
    x = model.embed(params, tokens[:, -1:], offset=t - 1)
    self_mask = padding_mask(tokens, model.pad_token_id)      # causality is implicit: one query, the last
    layer, layers = model.decoder_layer, params["decoder"]["layers"]
    new_cache = []
    for i, entry in enumerate(cache):
        x, self_kv = layer.decode_step(layers[str(i)], x, entry["cross"], entry["self"], self_mask, cross_mask)
        new_cache.append({"self": self_kv, "cross": entry["cross"]})
    return model.logits(params, model.final_norm(params["decoder"], x)[:, 0]), new_cache


def reorder_cache(cache: Cache, index: Tensor) -> Cache:
    """Select batch rows ``index [n]`` of every self-attention cache (beam reordering)."""
    return [{"self": tuple(c.index_select(0, index) for c in entry["self"]), "cross": entry["cross"]}
            for entry in cache]


def _check_generation(model, src: Tensor, max_len: Any, bos_id: Any, eos_id: Any, method: str) -> None:
    model.check_tokens("src", src, method)
    if isinstance(max_len, bool) or not isinstance(max_len, int) or not 1 <= max_len <= model.max_seq_len:
        raise ValueError(f"{where(model, method)}: max_len must be an int in [1, {model.max_seq_len}] "
                         f"(max_seq_len); got {max_len!r}")
    for name, value in (("bos_id", bos_id), ("eos_id", eos_id)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < model.vocab_size:
            raise ValueError(f"{where(model, method)}: {name} must be an int in [0, {model.vocab_size}) "
                             f"(vocab_size); got {value!r}")


def _start(model, params: Params, src: Tensor, repeat: int):
    memory = model._encode(params, src, None, False)
    cross_mask = padding_mask(src, model.pad_token_id)
    if repeat > 1:
        memory = memory.repeat_interleave(repeat, dim=0)
        cross_mask = cross_mask.repeat_interleave(repeat, dim=0)
    return init_cache(model, params, memory), cross_mask


@torch.no_grad()
def greedy_decode(model, params: Params, state: State, src: Tensor, max_len: int, *, bos_id: int = 1,
                  eos_id: int = 2) -> Tensor:
    """Greedy decoding with a key/value cache.

    Args:
        model: a ``Transformer``.
        src: ``[b, s]`` integer ids.
        max_len: most tokens to generate, ``1 <= max_len <= max_seq_len``.

    Returns:
        int64 ``[b, l]``, ``l <= max_len``: the generated tokens without BOS. A row keeps its
        EOS and is padded with ``pad_token_id`` after it; the loop stops once every row has
        emitted EOS (or after ``max_len`` tokens).

    Raises:
        TypeError: a non-integer ``src`` (as ``apply``).
        ValueError: a bad ``src`` shape (as ``apply``), ``max_len`` outside ``[1, max_seq_len]``
            or ids outside the vocabulary, before any computation.
    """
    _check_generation(model, src, max_len, bos_id, eos_id, "greedy_decode")
    model.check_params_tree(params, "greedy_decode")
    cache, cross_mask = _start(model, params, src, 1)
    prefix = torch.full((src.shape[0], 1), bos_id, dtype=torch.int64, device=src.device)
    done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    for _ in range(max_len):
        logits, cache = decode_step(model, params, prefix, cache, cross_mask)
        token = torch.where(done, model.pad_token_id, logits.argmax(-1))
        prefix = torch.cat([prefix, token[:, None]], dim=1)
        done = done | (token == eos_id)
        if bool(done.all()):
            break
    return prefix[:, 1:]


def length_normalizer(length: Tensor, alpha: float) -> Tensor:
    """GNMT's length penalty ``((5 + length) / 6) ** alpha`` (Wu et al., 2016); ``alpha=0`` is 1."""
    return ((5.0 + length.double()) / 6.0) ** alpha


class _Finished(NamedTuple):
    """Per source row, the finished hypotheses of a beam search: ``k`` slots and a discard slot ``k``."""
    scores: Tensor   # float64 [b, k + 1], length-normalized; -inf: an empty slot
    seqs: Tensor     # int64 [b, k + 1, max_len], pad_token_id after EOS
    length: Tensor   # int64 [b, k + 1], tokens including EOS
    count: Tensor    # int64 [b], slots filled


@torch.no_grad()
def beam_search(model, params: Params, state: State, src: Tensor, max_len: int, *, beam_size: int = 4,
                length_penalty: float = 1.0, bos_id: int = 1, eos_id: int = 2) -> Tensor:
    """Beam search with a key/value cache; the best hypothesis per row, laid out as greedy's.

    Hypotheses are ranked by ``sum(log p) / ((5 + n) / 6) ** length_penalty`` (GNMT), ``n``
    the number of generated tokens including EOS. Each step takes the ``2 * beam_size`` best
    extensions: EOS extensions ranked in the first ``beam_size`` become finished hypotheses
    (kept, never extended), the best ``beam_size`` others stay alive, and the cache rows are
    reordered by their beam of origin. A row is done once it holds ``beam_size`` finished
    hypotheses; at ``max_len`` the alive beams compete too. ``beam_size=1`` is exactly
    :func:`greedy_decode`.

    Returns:
        int64 ``[b, l]``, ``l <= max_len``: tokens without BOS, EOS kept, ``pad_token_id`` after.
    """
    _check_generation(model, src, max_len, bos_id, eos_id, "beam_search")
    model.check_params_tree(params, "beam_search")
    _check_beam(model, beam_size, length_penalty)
    b, k, pad, dev = src.shape[0], beam_size, model.pad_token_id, src.device
    cache, cross_mask = _start(model, params, src, k)
    prefix = torch.full((b * k, 1), bos_id, dtype=torch.int64, device=dev)
    # Only beam 0 is live at the start, so the first step does not pick k copies of one token.
    scores = torch.full((b, k), float("-inf"), dtype=torch.float64, device=dev)
    scores[:, 0] = 0.0
    fin = _Finished(torch.full((b, k + 1), float("-inf"), dtype=torch.float64, device=dev),
                    torch.full((b, k + 1, max_len), pad, dtype=torch.int64, device=dev),
                    torch.zeros((b, k + 1), dtype=torch.int64, device=dev),
                    torch.zeros(b, dtype=torch.int64, device=dev))
    for t in range(max_len):
        logits, cache = decode_step(model, params, prefix, cache, cross_mask)
        cand, beam, token, seqs = _extensions(scores, logits, prefix, k, model.vocab_size)
        fin = _finish(fin, cand, seqs, token == eos_id, t, length_penalty, pad)
        if bool((fin.count >= k).all()):
            break
        scores, cache, prefix = _keep_alive(cand, beam, seqs, token == eos_id, cache, prefix)
    return _best(fin, scores, prefix, length_penalty, pad)


def _check_beam(model, beam_size: Any, length_penalty: Any) -> None:
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"{where(model, 'beam_search')}: beam_size must be a positive int; got {beam_size!r}")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)):
        raise ValueError(f"{where(model, 'beam_search')}: length_penalty must be a float; got {length_penalty!r}")


def _extensions(scores: Tensor, logits: Tensor, prefix: Tensor, k: int, v: int):
    """The ``n = min(2k, k v)`` best one-token extensions of the alive beams, per row.

    Args:
        scores: float64 ``[b, k]`` the alive beams' summed log-probabilities (-inf: not live).
        logits: ``[b k, v]`` of their next token; ``prefix``: int64 ``[b k, 1 + t]``, BOS first.

    Returns:
        ``(cand [b, n] float64 summed log-probabilities, best first, beam [b, n] their beam,
        token [b, n] their last token, seqs [b, n, t + 1] their tokens without BOS)``.
    """
    b, t = scores.shape[0], prefix.shape[1] - 1
    logp = rearrange(torch.log_softmax(logits.double(), dim=-1), "(b k) v -> b (k v)", k=k)
    cand, idx = (scores.repeat_interleave(v, dim=1) + logp).topk(min(2 * k, k * v), dim=1)
    beam, token = idx // v, idx % v
    seqs = rearrange(prefix[:, 1:], "(b k) t -> b k t", k=k)
    seqs = seqs.gather(1, beam[..., None].expand(b, cand.shape[1], t))
    return cand, beam, token, torch.cat([seqs, token[..., None]], dim=2)


def _finish(fin: _Finished, cand: Tensor, seqs: Tensor, is_eos: Tensor, t: int, length_penalty: float,
            pad: int) -> _Finished:
    """``fin`` with the EOS extensions among the top ``k`` (finite, while the row has free slots)
    added, scored at length ``t + 1``; ``cand``, ``seqs`` and ``is_eos`` as :func:`_extensions`'."""
    (b, n_cand), k, max_len = cand.shape, fin.scores.shape[1] - 1, fin.seqs.shape[2]
    rank = torch.arange(n_cand, device=cand.device)
    fresh = is_eos & (rank < k) & torch.isfinite(cand) & (fin.count < k)[:, None]
    pos = fin.count[:, None] + fresh.cumsum(1) - 1
    fresh = fresh & (pos < k)
    slot = torch.where(fresh, pos, k)
    norm = cand / length_normalizer(torch.tensor(t + 1, device=cand.device), length_penalty)
    padded = torch.nn.functional.pad(seqs, (0, max_len - t - 1), value=pad)
    return _Finished(fin.scores.scatter(1, slot, torch.where(fresh, norm, float("-inf"))),
                     fin.seqs.scatter(1, slot[..., None].expand(b, n_cand, max_len), padded),
                     fin.length.scatter(1, slot, torch.full_like(slot, t + 1)),
                     fin.count + fresh.sum(1))


def _keep_alive(cand: Tensor, beam: Tensor, seqs: Tensor, is_eos: Tensor, cache: Cache, prefix: Tensor):
    """The ``k`` best extensions that are not EOS, in rank order, as the next step's beams.

    Returns:
        ``(scores [b, k], cache reordered by beam of origin, prefix [b k, 2 + t])``.
    """
    (b, n_cand), k = cand.shape, prefix.shape[0] // cand.shape[0]
    rank = torch.arange(n_cand, device=cand.device)
    keep = torch.where(is_eos, n_cand + rank, rank).argsort(dim=1)[:, :k]
    origin = beam.gather(1, keep) + torch.arange(b, device=cand.device)[:, None] * k
    cache = reorder_cache(cache, rearrange(origin, "b k -> (b k)"))
    alive = seqs.gather(1, keep[..., None].expand(b, k, seqs.shape[2]))
    prefix = torch.cat([prefix[:, :1], rearrange(alive, "b k t -> (b k) t")], dim=1)
    return cand.gather(1, keep), cache, prefix


def _best(fin: _Finished, scores: Tensor, prefix: Tensor, length_penalty: float, pad: int) -> Tensor:
    """The best hypothesis per row as int64 ``[b, l]``; rows still open at ``max_len`` also rank
    their alive beams (``scores [b, k]``, ``prefix [b k, 1 + steps]``, length = steps taken)."""
    (b, k), max_len = scores.shape, fin.seqs.shape[2]
    steps = prefix.shape[1] - 1 if not bool((fin.count >= k).all()) else 0
    best_scores, best_seqs, best_len = fin.scores[:, :k], fin.seqs[:, :k], fin.length[:, :k]
    if steps:
        open_rows = (fin.count < k)[:, None]
        alive_norm = scores / length_normalizer(torch.tensor(steps, device=scores.device), length_penalty)
        alive_seqs = rearrange(prefix[:, 1:], "(b k) t -> b k t", k=k)
        alive_seqs = torch.nn.functional.pad(alive_seqs, (0, max_len - steps), value=pad)
        best_scores = torch.cat([best_scores, torch.where(open_rows, alive_norm, float("-inf"))], dim=1)
        best_seqs = torch.cat([best_seqs, alive_seqs], dim=1)
        best_len = torch.cat([best_len, torch.full_like(alive_norm, steps, dtype=torch.int64)], dim=1)
    choice = best_scores.argmax(dim=1, keepdim=True)
    out = best_seqs.gather(1, choice[..., None].expand(b, 1, max_len))[:, 0]           # [b, max_len]
    return out[:, :int(best_len.gather(1, choice).max())]

"""Sampling from a decoder-only language model (:class:`deepfn.models.GPT`) with a key/value cache.

:func:`generate` runs the prompt once (``prefill``) and then one token per step through a
fixed-shape cached decode step (``GPT.decode_step``), compiled once and reused at every
position: ``max_new_tokens`` steps of one token each, never the whole context again. The
logits of each step pass through temperature, then :func:`top_k_mask`, then
:func:`top_p_mask` (the order of ``transformers``' logits warpers), and one token is drawn
with :func:`deepfn.random.categorical` under the step's own key, ``random.split(key,
max_new_tokens)[i]``.
"""

from __future__ import annotations

import functools

import torch

from .. import random
from .._checks import check_integer, check_rank, describe
from ..typing import Key, Params, Tensor

__all__ = ["generate", "top_k_mask", "top_p_mask", "sample_logits"]


def _check_floating(fn: str, logits: Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"{fn}: logits must be a floating tensor; got {describe(logits)}")


def top_k_mask(logits: Tensor, k: int) -> Tensor:
    """``logits`` with all but the ``k`` largest of each row (last axis) set to ``-inf``.

    Ties with the ``k``-th largest value are kept. ``k >= logits.shape[-1]`` keeps every entry.

    Args:
        logits: ``[..., v]`` floating.
        k: a positive int.

    Returns:
        A new tensor of ``logits``' shape and dtype.

    Raises:
        ValueError: ``k`` is not a positive int. TypeError: ``logits`` is not floating.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k_mask: k must be a positive int; got {k!r}")
    _check_floating("top_k_mask", logits)
    if k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_mask(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering: keep the smallest set of most likely entries whose probability
    reaches ``p`` (along the last axis); the rest become ``-inf``.

    An entry is dropped when the probability of the entries ranked above it already reaches
    ``p``, so the most likely entry is always kept and ``p = 1`` keeps everything with
    non-zero probability.

    Args:
        logits: ``[..., v]`` floating.
        p: a float in ``(0, 1]``.

    Returns:
        A new tensor of ``logits``' shape and dtype.

    Raises:
        ValueError: ``p`` outside ``(0, 1]``. TypeError: ``logits`` is not floating.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
        raise ValueError(f"top_p_mask: p must be a float in (0, 1]; got {p!r}")
    _check_floating("top_p_mask", logits)
    ranked, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(ranked.float(), dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs          # mass of the entries ranked above
    drop_ranked = before >= p
    drop = drop_ranked.scatter(-1, order, drop_ranked)     # back to the vocabulary's order
    return logits.masked_fill(drop, float("-inf"))


def sample_logits(key: Key, logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> Tensor:
    """One token per row of ``logits [b, v]``: ``int64 [b]``.

    ``temperature == 0`` is greedy (``argmax``; ``key``, ``top_k`` and ``top_p`` do not
    matter); otherwise ``logits / temperature``, then the top-k and top-p masks, then
    :func:`deepfn.random.categorical`.

    Raises:
        TypeError: ``logits`` is not a floating tensor.
        ValueError: ``temperature`` is negative, NaN or infinite (or ``top_k`` / ``top_p`` out
            of range, from the masks).
    """
    _check_floating("sample_logits", logits)
    if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
            or not 0 <= temperature < float("inf")):
        raise ValueError(f"sample_logits: temperature must be a finite float >= 0 (0 is greedy); got {temperature!r}")
    if temperature == 0:
        return torch.argmax(logits, dim=-1)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()      # the masks' softmax and the division in float32
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_mask(logits, top_k)
    if top_p is not None:
        logits = top_p_mask(logits, top_p)
    return random.categorical(key, logits, axis=-1)


def _step(model, params: Params, cache: Tensor, token: Tensor, pos: Tensor, key: Key, done: Tensor,
          temperature: float, top_k: int | None, top_p: float | None,
          eos_id: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """Feed ``token [b]`` at ``pos``, sample the next token; rows already ``done`` emit ``eos_id``."""
    logits, cache = model.decode_step(params, token, cache, pos)
    nxt = sample_logits(key, logits, temperature, top_k, top_p)
    if eos_id is not None:
        nxt = torch.where(done, eos_id, nxt)
        done = done | (nxt == eos_id)
    return nxt, cache, done


# Dynamo caches compiled code per code object, so this one wrapper serves every call of
# generate with the same model config and sampling options; positions, keys and tokens are
# tensors, so the steps of one call (and later calls) do not recompile.
# Made on first use, so that importing deepfn does not import Dynamo.
@functools.cache
def _compiled_step():
    return torch.compile(_step, fullgraph=True)


def _check_args(model, prompt: Tensor, key: Key, max_new_tokens: int, temperature: float,
                top_k: int | None, top_p: float | None, eos_id: int | None) -> None:
    check_integer("generate", "prompt", prompt)
    check_rank("generate", "prompt", prompt, 2, layout="[B, T0] of token ids")
    if prompt.shape[0] < 1 or prompt.shape[1] < 1:
        raise ValueError(f"generate: prompt must have at least one row and one token; got {describe(prompt)}")
    if not (isinstance(key, torch.Tensor) and key.dtype == torch.int64 and tuple(key.shape) == (2,)):
        raise TypeError(f"generate: key must be an int64 tensor [2] from deepfn.random.key; got {describe(key)}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be a positive int; got {max_new_tokens!r}")
    if prompt.shape[1] + max_new_tokens > model.max_len:
        raise ValueError(f"generate: the prompt's {prompt.shape[1]} tokens plus max_new_tokens={max_new_tokens} "
                         f"exceed the model's max_len={model.max_len}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"generate: temperature must be a float >= 0 (0 is greedy); got {temperature!r}")
    if temperature == float("inf"):
        raise ValueError("generate: temperature must be finite; got inf")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"generate: top_k must be None or an int >= 1; got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not 0.0 < top_p <= 1.0):
        raise ValueError(f"generate: top_p must be None or a float in (0, 1]; got {top_p!r}")
    if eos_id is not None and (isinstance(eos_id, bool) or not isinstance(eos_id, int)
                               or not 0 <= eos_id < model.vocab_size):
        raise ValueError(f"generate: eos_id must be None or an int in [0, {model.vocab_size}) (vocab_size); "
                         f"got {eos_id!r}")


def generate(model, params: Params, prompt: Tensor, key: Key, *, max_new_tokens: int,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             eos_id: int | None = None, compile: bool = True) -> Tensor:
    """Continue each row of ``prompt`` by ``max_new_tokens`` sampled tokens.

    Args:
        model: a :class:`deepfn.models.GPT` (anything with its ``prefill`` / ``decode_step``,
            ``max_len`` and ``vocab_size``).
        params: the model's params.
        prompt: ``[b, t0]`` integer ids (int64), ``t0 >= 1``, ``t0 + max_new_tokens <= max_len``.
        key: one key for the whole call; step ``i`` samples with ``random.split(key,
            max_new_tokens)[i]``. The same key gives the same tokens.
        max_new_tokens: how many tokens to append (>= 1).
        temperature: divides the logits; ``0`` is greedy decoding (``argmax``, no randomness).
        top_k: sample among the ``k`` most likely tokens only (``None``: all).
        top_p: sample from the nucleus of probability ``p`` only (``None``: all).
        eos_id: once a row emits it, the row continues with ``eos_id``.
        compile: run the cached decode step under ``torch.compile(fullgraph=True)`` (one
            graph for every position); ``False`` runs it eagerly (the same tokens, up to
            ties in float rounding).

    Returns:
        int64 ``[b, t0 + max_new_tokens]``: the prompt followed by the new tokens.

    Raises:
        TypeError: ``prompt`` is not an integer tensor, ``key`` not a key.
        ValueError: ``prompt`` not 2-d or too long for ``max_new_tokens``, or a sampling
            argument out of range (``temperature < 0``, ``top_k < 1``, ``top_p`` outside
            ``(0, 1]``, ``eos_id`` outside the vocabulary).
    """
    _check_args(model, prompt, key, max_new_tokens, temperature, top_k, top_p, eos_id)
    model.check_ids("prompt", prompt, "generate")
    prompt = prompt.to(torch.int64)
    b, t0 = prompt.shape
    dtype = params["wte"]["weight"].dtype
    cache = model.init_cache(b, dtype, prompt.device)
    if t0 > 1:   # every prompt token but the last; the first step feeds the last one
        with torch.no_grad():
            _, cache = model.prefill(params, prompt[:, :-1], cache)
    step = _compiled_step() if compile else _step
    keys = random.split(key.to(prompt.device), max_new_tokens).unbind(0)
    # Strides (1,) like the tokens the step returns: a [1] slice of the prompt keeps its row stride,
    # which the compiled step guards on, so batch 1 would compile a second graph at the next step.
    token = prompt[:, -1].clone(memory_format=torch.contiguous_format)
    done = torch.zeros(b, dtype=torch.bool, device=prompt.device)
    positions = torch.arange(t0 - 1, t0 - 1 + max_new_tokens, device=prompt.device).unbind(0)
    out = [prompt]
    # Sampling is not differentiable: no autograd graph, whatever the caller's grad mode (which
    # the compiled step would otherwise guard on, compiling once per mode).
    with torch.no_grad():
        for pos, k in zip(positions, keys, strict=True):
            token, cache, done = step(model, params, cache, token, pos, k, done, float(temperature), top_k,
                                      None if top_p is None else float(top_p), eos_id)
            out.append(token[:, None])
    return torch.cat(out, dim=1)

"""Generation: cached steps equal full recomputation, greedy/beam semantics, exhaustive beam oracle."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepfn import random, tree
from deepfn.models import decoding
from deepfn.models.transformer import Transformer

TINY = dict(vocab_size=20, d_model=16, n_heads=2, n_layers=2, d_ff=32, dropout=0.0, max_seq_len=12)
PAD, BOS, EOS = 0, 1, 2


def src_tokens(seed: int, b: int = 3, s: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(3, 20, (b, s), generator=g)
    x[1::2, s - 2:] = PAD                      # odd rows end in padding
    return x


def make(seed: int, eos_bias: float = 0.0, dtype=torch.float32, **overrides):
    """A tiny model; ``eos_bias`` raises EOS's logit so rows finish at different steps."""
    model = Transformer(**{**TINY, **overrides})
    params = tree.cast(model.init(random.key(seed))[0], dtype)
    if eos_bias and not model.tie_output:
        flat = tree.flatten(params)
        flat["output_layer.bias"] = flat["output_layer.bias"] + eos_bias * torch.nn.functional.one_hot(
            torch.tensor(EOS), model.vocab_size).to(dtype)
        params = tree.unflatten(flat)
    return model, params


def greedy_by_recompute(model, params, src, max_len):
    """Greedy decoding that reruns ``decode`` over the whole prefix at every step (no cache)."""
    memory = model.encode(params, {}, src)[0]
    prefix = torch.full((src.shape[0], 1), BOS)
    done = torch.zeros(src.shape[0], dtype=torch.bool)
    for _ in range(max_len):
        nxt = model.decode(params, {}, prefix, memory, src)[0][:, -1].argmax(-1)
        nxt = torch.where(done, PAD, nxt)
        prefix = torch.cat([prefix, nxt[:, None]], 1)
        done |= nxt == EOS
        if done.all():
            break
    return prefix[:, 1:]


@pytest.mark.parametrize("norm_first", [False, True])
def test_cached_step_equals_full_decode(norm_first):
    model, params = make(0, dtype=torch.float64, norm_first=norm_first)
    src = src_tokens(1)
    memory = model.encode(params, {}, src)[0]
    prefix = torch.tensor([[BOS, 5, 7, PAD, 9, 4, 2, 3]] * 3)   # a pad inside the prefix is masked alike
    prefix[1, 2] = 11
    cache = decoding.init_cache(model, params, memory)
    cross_mask = (src != PAD)[:, None, None, :]
    full = model.decode(params, {}, prefix, memory, src)[0]
    for t in range(1, prefix.shape[1] + 1):
        logits, new_cache = decoding.decode_step(model, params, prefix[:, :t], cache, cross_mask)
        torch.testing.assert_close(logits, full[:, t - 1], rtol=1e-10, atol=1e-10)
        cache = new_cache
    assert cache[0]["self"][0].shape == (3, 2, prefix.shape[1], 8)   # grew one position per step


@settings(max_examples=6)
@given(seed=st.integers(0, 2**16), bias=st.sampled_from([0.0, 2.0, 4.0]), norm_first=st.booleans())
def test_greedy_equals_uncached_greedy(seed, bias, norm_first):
    model, params = make(seed, bias, norm_first=norm_first)
    src = src_tokens(seed)
    out = model.greedy_decode(params, {}, src, 10)
    assert out.dtype == torch.int64
    assert torch.equal(out, greedy_by_recompute(model, params, src, 10))


@settings(max_examples=6)
@given(seed=st.integers(0, 2**16), bias=st.sampled_from([0.0, 3.0, 5.0]), max_len=st.integers(1, 12))
def test_greedy_eos_padding_semantics(seed, bias, max_len):
    model, params = make(seed, bias)
    out = model.greedy_decode(params, {}, src_tokens(seed, b=4), max_len)
    assert out.shape[0] == 4 and 1 <= out.shape[1] <= max_len
    is_eos = out == EOS
    ended = is_eos.any(1)
    first = torch.where(ended, is_eos.int().argmax(1), out.shape[1])
    after = torch.arange(out.shape[1])[None] > first[:, None]
    assert (out[after] == PAD).all()                                  # padded after EOS, EOS kept
    if ended.all():                                                   # stopped as soon as all ended
        assert out.shape[1] == int(first.max()) + 1
    else:
        assert out.shape[1] == max_len


def test_greedy_stops_when_every_row_emits_eos():
    model, params = make(0, eos_bias=100.0)
    out = model.greedy_decode(params, {}, src_tokens(0), 8)
    assert torch.equal(out, torch.full((3, 1), EOS))


@settings(max_examples=6)
@given(seed=st.integers(0, 2**16), bias=st.sampled_from([0.0, 2.0, 4.0]),
       alpha=st.sampled_from([0.0, 0.6, 1.0]), share=st.booleans())
def test_beam_size_one_equals_greedy(seed, bias, alpha, share):
    model, params = make(seed, bias, share_embeddings=share)
    src = src_tokens(seed)
    greedy = model.greedy_decode(params, {}, src, 9)
    assert torch.equal(model.beam_search(params, {}, src, 9, beam_size=1, length_penalty=alpha), greedy)


def hypothesis_scores(model, params, src, seqs, alpha):
    """GNMT-normalised log-probabilities of generated sequences (without BOS) by one full decode.

    Shorter sequences are right-padded; by causality the padding cannot change earlier logits.
    """
    n = max(len(s) for s in seqs)
    lengths = torch.tensor([len(s) for s in seqs])
    body = torch.stack([torch.nn.functional.pad(s, (0, n - len(s)), value=PAD) for s in seqs])
    prefix = torch.cat([torch.full((len(seqs), 1), BOS), body[:, :-1]], 1)
    logits = model.apply(params, {}, src[None].expand(len(seqs), -1), prefix)[0].double()
    logp = torch.log_softmax(logits, -1).gather(2, body[..., None])[..., 0]
    total = (logp * (torch.arange(n)[None] < lengths[:, None])).sum(1)
    return total / ((5 + lengths.double()) / 6) ** alpha


@pytest.mark.parametrize("alpha, eos_bias, vocab, max_len", [(0.0, 1.5, 5, 3), (1.0, 1.5, 5, 3), (1.0, -30.0, 4, 4)])
def test_wide_beam_finds_the_exhaustive_best(alpha, eos_bias, vocab, max_len):
    """With a beam wider than every prefix, beam search is exact: compare with enumeration.

    ``eos_bias=-30`` makes the best hypothesis run to ``max_len``, so every step's cache
    reordering matters.
    """
    model, params = make(5, eos_bias=eos_bias, vocab_size=vocab, max_seq_len=8)
    src = torch.tensor([[3, 3, 3, 2], [3, 2, 3, 0]])
    out = model.beam_search(params, {}, src, max_len, beam_size=100, length_penalty=alpha)
    for row in range(2):
        candidates = [torch.tensor(p) for n in range(1, max_len + 1) for p in itertools.product(range(vocab), repeat=n)
                      if (EOS not in p[:-1]) and (p[-1] == EOS or n == max_len)]
        scores = hypothesis_scores(model, params, src[row], candidates, alpha)
        best = candidates[int(scores.argmax())]
        got = out[row]
        got = got[: (got == EOS).int().argmax() + 1] if (got == EOS).any() else got
        assert torch.equal(got, best), (row, got, best)


@settings(max_examples=6)
@given(seed=st.integers(0, 2**16), beam=st.integers(2, 5), bias=st.sampled_from([0.0, 3.0]))
def test_beam_layout_and_not_worse_than_greedy_under_no_penalty(seed, beam, bias):
    model, params = make(seed, bias)
    src = src_tokens(seed)
    out = model.beam_search(params, {}, src, 7, beam_size=beam, length_penalty=0.0)
    assert out.dtype == torch.int64 and out.shape[0] == 3 and 1 <= out.shape[1] <= 7
    is_eos = out == EOS
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1), out.shape[1])
    assert (out[torch.arange(out.shape[1])[None] > first[:, None]] == PAD).all()


@pytest.fixture(scope="module")
def tiny():
    return make(0)


def test_rejects_max_len_beyond_max_seq_len(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match=r"\.greedy_decode: max_len must be an int in \[1, 12\] \(max_seq_len\); got 13"):
        model.greedy_decode(params, {}, src_tokens(0), 13)


def test_rejects_zero_max_len_in_beam_search(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match=r"\.beam_search: max_len must be an int in \[1, 12\]"):
        model.beam_search(params, {}, src_tokens(0), 0)


def test_rejects_bad_beam_size(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match=r"\.beam_search: beam_size must be a positive int; got 0"):
        model.beam_search(params, {}, src_tokens(0), 5, beam_size=0)


def test_rejects_eos_outside_vocabulary(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match=r"\.greedy_decode: eos_id must be an int in \[0, 20\)"):
        model.greedy_decode(params, {}, src_tokens(0), 5, eos_id=20)


def test_rejects_float_source(tiny):
    model, params = tiny
    with pytest.raises(TypeError, match=r"\.beam_search: src must be an integer tensor"):
        model.beam_search(params, {}, torch.zeros(2, 3), 5)


def test_rejects_source_beyond_max_seq_len(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match=r"\.greedy_decode: src must have 1 to 12 positions \(max_seq_len=12\); got 13"):
        model.greedy_decode(params, {}, src_tokens(0, s=13), 5)

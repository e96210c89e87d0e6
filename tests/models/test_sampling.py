"""deepfn.models.generate and its masks: greedy equals an uncached argmax loop, top-k / top-p
against transformers' logits warpers, sampling frequencies against softmax, keys, EOS,
compile (one graph for every position) and one rejection test per bad argument."""

from __future__ import annotations

import pytest
import torch

from deepfn import random
from deepfn.models import GPT, generate
from deepfn.models.sampling import sample_logits, top_k_mask, top_p_mask

TINY = dict(vocab_size=19, max_len=14, d_model=16, n_layers=2, n_heads=2)


@pytest.fixture(scope="module")
def tiny():
    model = GPT(**TINY)
    params, _ = model.init(random.key(0))
    return model, params


def _prompt(seed: int, b: int, t: int) -> torch.Tensor:
    return random.randint(random.key(seed), (b, t), 0, TINY["vocab_size"])


def _logits(seed: int, *shape: int) -> torch.Tensor:
    return 2.0 * random.normal(random.key(seed), shape)


# -- masks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 3, 10])
def test_top_k_mask_equals_transformers_warper(k):
    warpers = pytest.importorskip("transformers.generation.logits_process")
    logits = _logits(1, 4, 10)
    want = warpers.TopKLogitsWarper(top_k=k)(None, logits.clone())
    assert torch.equal(top_k_mask(logits, k), want)
    assert int(torch.isfinite(top_k_mask(logits, k)).sum(-1).min()) == k


@pytest.mark.parametrize("p", [0.05, 0.3, 0.7, 0.95, 1.0])
def test_top_p_mask_equals_transformers_warper(p):
    warpers = pytest.importorskip("transformers.generation.logits_process")
    logits = _logits(2, 6, 12)
    want = warpers.TopPLogitsWarper(top_p=p)(None, logits.clone())
    assert torch.equal(torch.isfinite(top_p_mask(logits, p)), torch.isfinite(want))


def test_top_k_mask_keeps_ties_and_large_k_is_identity():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0]])
    assert torch.isfinite(top_k_mask(logits, 1)).tolist() == [[False, True, True, False]]
    assert top_k_mask(logits, 4) is logits and top_k_mask(logits, 9) is logits


def test_top_p_mask_keeps_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.15]])
    kept = lambda p: torch.isfinite(top_p_mask(probs.log(), p)).tolist()[0]  # noqa: E731
    assert kept(0.5) == [True, False, False, False]      # the top entry alone reaches 0.5
    assert kept(0.6) == [True, False, True, False]
    assert kept(0.85) == [True, False, True, True]
    assert kept(0.96) == [True, True, True, True]
    assert kept(1e-6) == [True, False, False, False]     # the most likely entry always stays


@pytest.mark.parametrize("call, match", [
    (lambda: top_k_mask(torch.zeros(2, 3), 0), r"top_k_mask: k must be a positive int; got 0"),
    (lambda: top_k_mask(torch.zeros(2, 3), 1.5), r"top_k_mask: k must be a positive int; got 1\.5"),
    (lambda: top_p_mask(torch.zeros(2, 3), 0.0), r"top_p_mask: p must be a float in \(0, 1\]; got 0\.0"),
    (lambda: top_p_mask(torch.zeros(2, 3), 1.5), r"top_p_mask: p must be a float in \(0, 1\]; got 1\.5"),
], ids=lambda v: None)
def test_bad_mask_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_sample_logits_frequencies_follow_tempered_top_k_softmax():
    logits = torch.tensor([1.0, 0.0, 2.0, -1.0, 0.5])
    n = 40_000
    draws = sample_logits(random.key(3), logits.expand(n, -1), temperature=0.7, top_k=3)
    counts = torch.bincount(draws, minlength=5).double()
    want = torch.softmax(top_k_mask(logits / 0.7, 3).double(), 0)
    assert counts[1] == 0 and counts[3] == 0
    kept = want > 0
    chi2 = float(((counts[kept] - n * want[kept]) ** 2 / (n * want[kept])).sum())
    assert chi2 < 25, chi2                             # 2 degrees of freedom


# -- generate ---------------------------------------------------------------------------------

def _uncached_greedy(model: GPT, params, prompt: torch.Tensor, n: int) -> torch.Tensor:
    ids = prompt
    for _ in range(n):
        logits, _ = model.apply(params, {}, ids)
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize("prompt_len", [1, 5])
def test_greedy_equals_uncached_argmax_loop(tiny, prompt_len):
    model, params = tiny
    prompt = _prompt(4, 3, prompt_len)
    out = generate(model, params, prompt, random.key(0), max_new_tokens=8, temperature=0, compile=False)
    assert out.shape == (3, prompt_len + 8) and out.dtype == torch.int64
    assert torch.equal(out, _uncached_greedy(model, params, prompt, 8))


def test_top_k_one_equals_greedy(tiny):
    model, params = tiny
    prompt = _prompt(5, 2, 3)
    greedy = generate(model, params, prompt, random.key(0), max_new_tokens=6, temperature=0, compile=False)
    top1 = generate(model, params, prompt, random.key(1), max_new_tokens=6, top_k=1, compile=False)
    assert torch.equal(top1, greedy)


def test_same_key_same_tokens_other_key_other_tokens(tiny):
    model, params = tiny
    prompt = _prompt(6, 4, 2)
    args = dict(max_new_tokens=10, temperature=1.5, compile=False)
    a = generate(model, params, prompt, random.key(7), **args)
    b = generate(model, params, prompt, random.key(7), **args)
    c = generate(model, params, prompt, random.key(8), **args)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, :2], prompt)


def test_first_token_frequencies_follow_softmax(tiny):
    model, params = tiny
    prompt = _prompt(9, 1, 3).expand(6000, -1)
    last = model.apply(params, {}, prompt[:1])[0][0, -1]
    first = generate(model, params, prompt, random.key(10), max_new_tokens=1, temperature=0.25, compile=False)[:, -1]
    want = torch.softmax(last.double() / 0.25, 0)
    counts = torch.bincount(first, minlength=TINY["vocab_size"]).double()
    big = want * 6000 > 20                             # bins with enough expected draws
    chi2 = float(((counts[big] - 6000 * want[big]) ** 2 / (6000 * want[big])).sum())
    assert chi2 < 3 * int(big.sum()) + 20, chi2
    assert counts[~big].sum() < 6000 * want[~big].sum() + 60


def test_rows_continue_with_eos_after_emitting_it(tiny):
    model, params = tiny
    prompt = _prompt(11, 6, 2)
    free = generate(model, params, prompt, random.key(12), max_new_tokens=10, temperature=2.0, compile=False)
    eos = int(free[0, 4])                              # a token that row 0 emits at step 2
    out = generate(model, params, prompt, random.key(12), max_new_tokens=10, temperature=2.0, eos_id=eos,
                   compile=False)
    for row in range(6):
        new = free[row, 2:]
        hits = (new == eos).nonzero()
        if len(hits) == 0:
            assert torch.equal(out[row], free[row])
            continue
        first = 2 + int(hits[0])
        assert torch.equal(out[row, :first + 1], free[row, :first + 1])   # identical up to the EOS
        assert bool((out[row, first:] == eos).all())


def test_compiled_equals_eager_and_second_call_does_not_recompile(tiny):
    model, params = tiny
    args = dict(max_new_tokens=4, temperature=0.8, top_k=8, top_p=0.9, eos_id=3)
    first = generate(model, params, _prompt(13, 2, 3), random.key(14), **args)
    assert torch.equal(first, generate(model, params, _prompt(13, 2, 3), random.key(14), **args, compile=False))
    # Other prompt values and length (so other positions), another key and the caller's grad
    # mode off: the same graph.
    with torch.compiler.set_stance("fail_on_recompile"), torch.no_grad():
        second = generate(model, params, _prompt(15, 2, 6), random.key(16), **args)
    assert torch.equal(second, generate(model, params, _prompt(15, 2, 6), random.key(16), **args, compile=False))


K = random.key(0)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(prompt=torch.zeros(2, 3)), TypeError, r"generate: prompt must be an integer tensor \(int64 ids\); "
                                                r"got float32 \[2, 3\]"),
    (dict(prompt=torch.zeros(3, dtype=torch.int64)), ValueError, r"generate: prompt must be 2-d \[B, T0\]"),
    (dict(prompt=torch.zeros(2, 0, dtype=torch.int64)), ValueError, r"generate: prompt must have at least one"),
    (dict(prompt=torch.zeros(1, 10, dtype=torch.int64)), ValueError,
     r"generate: the prompt's 10 tokens plus max_new_tokens=5 exceed the model's max_len=14"),
    (dict(prompt=torch.tensor([[1, 19]])), ValueError, r"GPT\(.*\)\.generate: prompt must lie in \[0, 19\)"),
    (dict(max_new_tokens=0), ValueError, r"generate: max_new_tokens must be a positive int; got 0"),
    (dict(temperature=-0.5), ValueError, r"generate: temperature must be a float >= 0 \(0 is greedy\); got -0\.5"),
    (dict(temperature=float("nan")), ValueError, r"generate: temperature must be a float >= 0"),
    (dict(top_k=0), ValueError, r"generate: top_k must be None or an int >= 1; got 0"),
    (dict(top_p=0.0), ValueError, r"generate: top_p must be None or a float in \(0, 1\]; got 0\.0"),
    (dict(top_p=1.2), ValueError, r"generate: top_p must be None or a float in \(0, 1\]; got 1\.2"),
    (dict(eos_id=19), ValueError, r"generate: eos_id must be None or an int in \[0, 19\) \(vocab_size\); got 19"),
    (dict(key=torch.zeros(2)), TypeError, r"generate: key must be an int64 tensor \[2\]"),
], ids=lambda v: None)
def test_bad_arguments_raise(tiny, kwargs, exc, match):
    model, params = tiny
    args = dict(prompt=_prompt(0, 1, 2), key=K, max_new_tokens=5) | kwargs
    prompt, key = args.pop("prompt"), args.pop("key")
    with pytest.raises(exc, match=match):
        generate(model, params, prompt, key, compile=False, **args)

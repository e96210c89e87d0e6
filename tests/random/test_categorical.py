"""Tests of deepfn.random.categorical: frequencies against softmax, determinism across
eager/compile/vmap, -inf logits, axes, purity and one rejection test per bad input."""

from __future__ import annotations

import pytest
import torch

from deepfn import random


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    n = float(counts.sum())
    expected = probs.double() * n
    return float(((counts.double() - expected) ** 2 / expected).sum())


def test_frequencies_match_softmax_chi_square():
    logits = torch.tensor([1.5, -0.5, 0.0, 2.0, -3.0, 0.7])
    n = 100_000
    draws = random.categorical(random.key(11), logits.expand(n, -1))
    counts = torch.bincount(draws, minlength=6)
    # chi2 with 5 degrees of freedom: mean 5, sd 3.2; 35 is beyond 9 sd
    assert _chi_square(counts, torch.softmax(logits.double(), 0)) < 35


def test_frequencies_float64_and_bfloat16_logits():
    base = torch.tensor([0.0, 1.0, -1.0])
    for dtype in (torch.float64, torch.bfloat16):
        logits = base.to(dtype)
        counts = torch.bincount(random.categorical(random.key(3), logits.expand(60_000, -1)), minlength=3)
        assert _chi_square(counts, torch.softmax(logits.double(), 0)) < 30, dtype


def test_batch_of_keys_frequencies():
    # Many keys, one shared logits row: the key's batch axis leads the result.
    logits = torch.tensor([0.0, 0.0, 1.0])
    draws = random.categorical(random.split(random.key(5), 50_000), logits)
    assert draws.shape == (50_000,) and draws.dtype == torch.int64
    counts = torch.bincount(draws, minlength=3)
    assert _chi_square(counts, torch.softmax(logits.double(), 0)) < 30


def test_minus_inf_logits_never_drawn():
    logits = torch.tensor([[0.0, float("-inf"), 0.0, float("-inf")]]).expand(20_000, -1)
    draws = random.categorical(random.key(1), logits)
    assert set(draws.unique().tolist()) == {0, 2}
    one_left = torch.tensor([float("-inf"), float("-inf"), 3.0])
    assert int(random.categorical(random.key(2), one_left)) == 2


def test_a_dominant_logit_is_always_drawn():
    logits = torch.tensor([0.0, 60.0, 0.0]).expand(1000, -1)
    assert bool((random.categorical(random.key(4), logits) == 1).all())


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2, -3])
def test_axis_selects_the_category_axis(axis):
    shape = [3, 4, 5]
    logits = torch.zeros(shape)
    logits.select(axis, 2).fill_(60.0)        # index 2 along `axis` dominates everywhere
    draws = random.categorical(random.key(8), logits, axis=axis)
    del shape[axis]
    assert draws.shape == tuple(shape) and bool((draws == 2).all())


def test_axis_frequencies_match_softmax():
    logits = torch.tensor([0.5, -1.0, 1.0])
    draws = random.categorical(random.key(12), logits[:, None].expand(3, 40_000), axis=0)
    counts = torch.bincount(draws, minlength=3)
    assert _chi_square(counts, torch.softmax(logits.double(), 0)) < 30


def test_positive_axis_with_batched_keys():
    logits = torch.zeros(2, 7)
    logits[:, 3] = 50.0
    keys = random.split(random.key(6), 4)
    draws = random.categorical(keys, logits.T, axis=0)     # categories along axis 0
    assert draws.shape == (4, 2) and bool((draws == 3).all())


def test_same_key_same_draw_different_key_differs_and_pure():
    logits = torch.zeros(64, 10)
    before = logits.clone()
    a = random.categorical(random.key(0), logits)
    b = random.categorical(random.key(0), logits)
    c = random.categorical(random.key(1), logits)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(logits, before) and logits._version == 0
    rng = torch.random.get_rng_state()
    random.categorical(random.key(0), logits)
    assert torch.equal(rng, torch.random.get_rng_state())


def test_vmap_over_keys_equals_loop():
    logits = torch.randn(5, 9, generator=torch.Generator().manual_seed(1))
    keys = random.split(random.key(9), 4)
    batched = torch.func.vmap(random.categorical, in_dims=(0, None))(keys, logits)
    looped = torch.stack([random.categorical(k, logits) for k in keys])
    assert torch.equal(batched, looped)
    assert torch.equal(random.categorical(keys, logits), looped)
    assert not torch.equal(batched[0], batched[1])


def test_vmap_over_logits_equals_loop():
    logits = torch.randn(3, 9, generator=torch.Generator().manual_seed(2))
    k = random.key(4)
    batched = torch.func.vmap(random.categorical, in_dims=(None, 0))(k, logits)
    assert torch.equal(batched, torch.stack([random.categorical(k, row) for row in logits]))


def test_compiled_equals_eager():
    logits = torch.randn(16, 50, generator=torch.Generator().manual_seed(3))
    logits[:, 7] = float("-inf")
    fn = torch.compile(random.categorical, fullgraph=True)
    k = random.key(2026)
    assert torch.equal(fn(k, logits), random.categorical(k, logits))


K = random.key(0)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: random.categorical(K, torch.tensor([1, 2, 3])), TypeError,
     r"random\.categorical: logits must be a floating tensor; got int64 \[3\]"),
    (lambda: random.categorical(K, [0.0, 1.0]), TypeError, r"random\.categorical: logits must be a floating tensor"),
    (lambda: random.categorical(K, torch.zeros(2, 3), axis=2), ValueError,
     r"random\.categorical: axis must lie in \[-2, 2\).*got axis=2"),
    (lambda: random.categorical(K, torch.zeros(2, 3), axis=-3), ValueError, r"random\.categorical: axis must lie in"),
    (lambda: random.categorical(K, torch.tensor(1.0)), ValueError, r"random\.categorical: axis must lie in \[0, 0\)"),
    (lambda: random.categorical(K, torch.zeros(2, 3), axis=1.0), TypeError, r"random\.categorical: axis must be an int"),
    (lambda: random.categorical(K, torch.zeros(2, 0)), ValueError,
     r"random\.categorical: logits need at least one category along axis -1"),
    (lambda: random.categorical(torch.zeros(2), torch.zeros(3)), TypeError, r"random\.categorical: key must be an int64"),
], ids=lambda v: None)
def test_bad_input_raises(call, exc, match):
    with pytest.raises(exc, match=match):
        call()

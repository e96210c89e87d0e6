"""per_example_grads equals a Python loop; DP-SGD clipping and noise."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepfn import losses, random, tree
from deepfn.models import MLP
from deepfn.train import clip_per_example, dp_sgd_grads, per_example_grads

MODEL = MLP(5, (7,), 3)


def _loss(params, x, y):
    return losses.cross_entropy(MODEL.apply(params, {}, x)[0], y)


def _data(b, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 5, generator=g), torch.randint(0, 3, (b,), generator=g)


@settings(max_examples=8)
@given(b=st.integers(1, 6), seed=st.integers(0, 50))
def test_equals_python_loop(b, seed):
    params, _ = MODEL.init(random.key(seed))
    x, y = _data(b, seed)
    got = per_example_grads(_loss)(params, x, y)
    for i in range(b):
        ref = torch.func.grad(_loss)(params, x[i:i + 1], y[i:i + 1])
        for a, r in zip([t[i] for t in tree.leaves(got)], tree.leaves(ref), strict=True):
            torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6)


def test_mean_of_per_example_grads_is_the_batch_grad():
    params, _ = MODEL.init(random.key(0))
    x, y = _data(6)
    mean = tree.map(lambda g: g.mean(0), per_example_grads(_loss)(params, x, y))
    for a, r in zip(tree.leaves(mean), tree.leaves(torch.func.grad(_loss)(params, x, y)), strict=True):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6)


def test_compiled_equals_eager():
    params, _ = MODEL.init(random.key(0))
    x, y = _data(4)
    fn = per_example_grads(_loss)
    got = torch.compile(fn, fullgraph=True)(params, x, y)
    for a, r in zip(tree.leaves(got), tree.leaves(fn(params, x, y)), strict=True):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6)


def test_clip_per_example_matches_loop():
    g = {"a": torch.randn(4, 3), "b": torch.randn(4, 2, 2)}
    g["a"][1] *= 100
    clipped = clip_per_example(g, 1.0)
    for i in range(4):
        norm = torch.sqrt(g["a"][i].square().sum() + g["b"][i].square().sum())
        factor = min(1.0, 1.0 / (float(norm) + 1e-6))
        torch.testing.assert_close(clipped["a"][i], g["a"][i] * factor)
        torch.testing.assert_close(clipped["b"][i], g["b"][i] * factor)
    row = torch.sqrt(clipped["a"][1].square().sum() + clipped["b"][1].square().sum())
    assert float(row) == pytest.approx(1.0, rel=1e-5)


def test_dp_sgd_without_noise_is_mean_of_clipped():
    params, _ = MODEL.init(random.key(0))
    x, y = _data(5)
    got = dp_sgd_grads(_loss, max_norm=0.1)(params, x, y)
    ref = tree.map(lambda g: g.mean(0), clip_per_example(per_example_grads(_loss)(params, x, y), 0.1))
    for a, r in zip(tree.leaves(got), tree.leaves(ref), strict=True):
        torch.testing.assert_close(a, r)


def test_dp_sgd_noise_is_a_function_of_the_key():
    params, _ = MODEL.init(random.key(0))
    x, y = _data(5)
    fn = dp_sgd_grads(_loss, max_norm=0.1, noise_multiplier=1.0)
    a, b, c = fn(params, x, y, key=random.key(1)), fn(params, x, y, key=random.key(1)), fn(params, x, y, key=random.key(2))
    assert tree.all_equal(a, b) and not tree.all_equal(a, c)
    clean = dp_sgd_grads(_loss, max_norm=0.1)(params, x, y)
    noise = torch.cat([(n - m).flatten() for n, m in zip(tree.leaves(a), tree.leaves(clean), strict=True)]) * 5
    assert 0.07 < float(noise.std()) < 0.13          # std = noise_multiplier * max_norm


def test_dp_sgd_noise_needs_a_key():
    params, _ = MODEL.init(random.key(0))
    with pytest.raises(ValueError, match=r"dp_sgd_grads: noise_multiplier > 0 needs key="):
        dp_sgd_grads(_loss, 1.0, noise_multiplier=1.0)(params, *_data(2))


def test_dp_sgd_rejects_negative_noise():
    with pytest.raises(ValueError, match=r"dp_sgd_grads: noise_multiplier must be >= 0; got -1"):
        dp_sgd_grads(_loss, 1.0, noise_multiplier=-1)


def test_dp_sgd_rejects_bad_max_norm():
    with pytest.raises(ValueError, match=r"dp_sgd_grads: max_norm must be a positive float; got 0"):
        dp_sgd_grads(_loss, 0)


def test_clip_rejects_bad_max_norm():
    with pytest.raises(ValueError, match=r"clip_per_example: max_norm must be a positive float; got -2"):
        clip_per_example({"a": torch.ones(2, 2)}, -2)


def test_rejects_mismatched_batch():
    params, _ = MODEL.init(random.key(0))
    x, y = _data(4)
    with pytest.raises(ValueError, match=r"per_example_grads: data must be tensors with one shared leading"):
        per_example_grads(_loss)(params, x, y[:3])

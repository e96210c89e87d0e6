"""Tests of deepfn.random: known answers, determinism across eager/compile/vmap, purity,
statistics with fixed keys, and one rejection test per bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from deepfn import random
from deepfn.random import _threefry2x32

FLOATS = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
M32 = 0xFFFFFFFF


def _everything(k: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every sampler once, in several dtypes, all of one shape: the compiled graph then shares
    the generator's rounds between samplers (CSE), which keeps the one compile affordable."""
    s = (2, 3)
    return {
        "split": random.split(k, 3),
        "fold_in": random.fold_in(k, 7),
        "uniform_f32": random.uniform(k, s),
        "uniform_f64": random.uniform(k, s, torch.float64, low=-2.0, high=3.0),
        "uniform_bf16": random.uniform(k, s, torch.bfloat16),
        "normal_f32": random.normal(k, s),
        "normal_f64": random.normal(k, s, torch.float64),
        "normal_bf16": random.normal(k, s, torch.bfloat16),
        "bernoulli": random.bernoulli(k, 0.3, s),
        "randint": random.randint(k, s, -3, 9),
        "permutation": random.permutation(k, 6),
    }


# ---------------------------------------------------------------- known answers, keys

@pytest.mark.parametrize("key_words, counter, expected", [
    # Random123's known-answer vectors for Threefry-2x32 with 20 rounds.
    ((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
    ((M32, M32), (M32, M32), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
])
def test_threefry_known_answers(key_words, counter, expected):
    t = [torch.tensor(v, dtype=torch.int64) for v in (*key_words, *counter)]
    y0, y1 = _threefry2x32(*t)
    assert (int(y0), int(y1)) == expected


def test_key_layout_and_range():
    k = random.key(0)
    assert k.dtype == torch.int64 and k.shape == (2,)
    assert random.key(2**40 + 5).tolist() == [2**8, 5]
    neg = random.key(-1)
    assert neg.tolist() == [M32, M32]          # two's complement in 64 bits, words unsigned
    assert not torch.equal(random.key(1), random.key(2))


def test_split_shape_and_unpacking():
    k = random.key(3)
    ks = random.split(k, 5)
    assert ks.shape == (5, 2) and ks.dtype == torch.int64
    assert len({tuple(r) for r in ks.tolist()}) == 5
    k1, k2 = random.split(k)
    assert k1.shape == (2,) and not torch.equal(k1, k2)
    assert torch.equal(random.split(k, 3)[:2], random.split(k, 2))   # a prefix is stable
    assert ((ks >= 0) & (ks <= M32)).all()


@pytest.mark.parametrize("data", [0, 1, 7, 2**31, 2**32 + 3, 2**62, -1, -12345])
def test_fold_in_int_equals_0d_tensor(data):
    k = random.key(11)
    assert torch.equal(random.fold_in(k, data), random.fold_in(k, torch.tensor(data)))
    if -(2**31) <= data < 2**31:
        assert torch.equal(random.fold_in(k, data), random.fold_in(k, torch.tensor(data, dtype=torch.int32)))


def test_fold_in_distinct_and_apart_from_split():
    k = random.key(5)
    folded = {tuple(random.fold_in(k, i).tolist()) for i in range(200)}
    assert len(folded) == 200
    assert not folded & {tuple(r) for r in random.split(k, 200).tolist()}


def test_same_key_same_values_and_input_untouched():
    k = random.key(42)
    before = k.clone()
    a, b = _everything(k), _everything(k)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert torch.equal(k, before) and k._version == 0
    other = _everything(random.key(43))
    assert not torch.equal(a["uniform_f32"], other["uniform_f32"])


# ---------------------------------------------------------------- transforms

@pytest.fixture(scope="module")
def compiled_everything():
    # One fullgraph compile for all samplers (compilation is the slow part of this file).
    fn = torch.compile(_everything, fullgraph=True)
    k = random.key(2024)
    return fn(k), _everything(k)


@pytest.mark.parametrize("name", list(_everything(random.key(0))))
def test_compiled_equals_eager(compiled_everything, name):
    compiled, eager = compiled_everything
    assert compiled[name].dtype == eager[name].dtype
    if name == "normal_f64":
        # Inductor's vectorised float64 log/cos may differ from ATen's by an ulp; every
        # narrower dtype rounds that difference away and is compared bit for bit.
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-15, atol=1e-15)
    else:
        assert torch.equal(compiled[name], eager[name]), name


def test_vmap_over_keys_equals_loop():
    keys = random.split(random.key(9), 4)
    batched = torch.func.vmap(_everything)(keys)
    for i in range(4):
        single = _everything(keys[i])
        for name, value in single.items():
            assert torch.equal(batched[name][i], value), (name, i)
    assert not torch.equal(batched["uniform_f32"][0], batched["uniform_f32"][1])


def test_batched_key_without_vmap_equals_loop():
    keys = random.split(random.key(9), 3)
    assert torch.equal(random.uniform(keys, (4,)), torch.stack([random.uniform(k, (4,)) for k in keys]))
    assert torch.equal(random.normal(keys, (4,)), torch.stack([random.normal(k, (4,)) for k in keys]))


def test_vmap_over_fold_in_data():
    k = random.key(1)
    data = torch.arange(5)
    batched = torch.func.vmap(lambda d: random.fold_in(k, d))(data)
    assert torch.equal(batched, torch.stack([random.fold_in(k, i) for i in range(5)]))


def test_global_rng_untouched():
    saved = torch.random.get_rng_state()
    try:
        torch.manual_seed(1234)
        state = torch.random.get_rng_state()
        _everything(random.key(0))
        random.uniform(random.key(1), (1000,))
        assert torch.equal(torch.random.get_rng_state(), state)
        after = torch.rand(8)
        torch.manual_seed(1234)
        assert torch.equal(after, torch.rand(8))
    finally:
        torch.random.set_rng_state(saved)


# ---------------------------------------------------------------- ranges and dtypes

@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("low, high", [(0.0, 1.0), (-2.0, 3.0), (1.0, 1.0 + 2**-6)])
def test_uniform_half_open_interval(dtype, low, high):
    x = random.uniform(random.key(0), (20000,), dtype, low=low, high=high)
    assert x.dtype == dtype and x.shape == (20000,)
    assert (x >= low).all() and (x < high).all()
    assert x.unique().numel() > 1


def test_uniform_float64_uses_53_bits():
    x = random.uniform(random.key(0), (4096,), torch.float64)
    # float32-precision values would all be multiples of 2**-24
    assert ((x * 2**24) != torch.round(x * 2**24)).float().mean() > 0.99


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_normal_dtype_and_consistency(dtype):
    z = random.normal(random.key(0), (1000,), dtype)
    z32 = random.normal(random.key(0), (1000,), torch.float32)
    assert z.dtype == dtype and torch.isfinite(z).all()
    if dtype != torch.float64:
        # narrow dtypes round the same 24-bit draw (float64 uses 53-bit uniforms of its own)
        assert torch.equal(z, z32.to(dtype))


# ---------------------------------------------------------------- statistics (fixed keys)

def _chi_square(counts: torch.Tensor, expected: float) -> float:
    return float(((counts.double() - expected) ** 2 / expected).sum())


def test_uniform_chi_square():
    n, bins = 200_000, 100
    x = random.uniform(random.key(7), (n,))
    counts = torch.bincount((x * bins).long(), minlength=bins)
    # chi2 with 99 degrees of freedom: mean 99, sd 14; 200 is beyond 7 sd
    assert _chi_square(counts, n / bins) < 200


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_split_and_fold_in_streams_uncorrelated():
    n = 50_000
    bound = 5 / math.sqrt(n)
    k = random.key(0)
    k1, k2 = random.split(k)
    pairs = [(k1, k2), (k, k1), (random.fold_in(k, 0), random.fold_in(k, 1)),
             (random.fold_in(k, 1), random.fold_in(k, 2)), (random.fold_in(k, 0), k1)]
    for a, b in pairs:
        assert abs(_corr(random.uniform(a, (n,)), random.uniform(b, (n,)))) < bound
    u = random.uniform(k1, (n + 1,))
    assert abs(_corr(u[:-1], u[1:])) < bound           # lag-1 within one stream


def test_normal_moments():
    n = 100_000
    z = random.normal(random.key(3), (n,), torch.float64)
    mean, var = z.mean(), z.var()
    c = z - mean
    skew = (c**3).mean() / var**1.5
    kurt = (c**4).mean() / var**2 - 3
    assert abs(mean) < 5 / math.sqrt(n)
    assert abs(var - 1) < 5 * math.sqrt(2 / n)
    assert abs(skew) < 5 * math.sqrt(6 / n)
    assert abs(kurt) < 5 * math.sqrt(24 / n)
    # tails: P(|z| > 3) = 0.0027
    assert abs((z.abs() > 3).double().mean() - 0.0027) < 0.0009


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.93, 1.0])
def test_bernoulli_frequency(p):
    n = 100_000
    b = random.bernoulli(random.key(4), p, (n,))
    assert b.dtype == torch.bool and b.shape == (n,)
    assert abs(b.double().mean() - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-12


def test_bernoulli_tensor_p_broadcasts():
    p = torch.tensor([0.0, 1.0, 0.5])
    b = random.bernoulli(random.key(4), p, (4000, 3))
    assert not b[:, 0].any() and b[:, 1].all()
    assert abs(b[:, 2].double().mean() - 0.5) < 0.05


@pytest.mark.parametrize("low, high", [(0, 10), (-7, 6), (5, 6), (0, 1000)])
def test_randint_range_and_uniformity(low, high):
    n = 100_000
    r = random.randint(random.key(8), (n,), low, high)
    assert r.dtype == torch.int64
    assert r.min() >= low and r.max() < high
    m = high - low
    counts = torch.bincount(r - low, minlength=m)
    assert (counts > 0).all()
    if m > 1:   # chi2 with m-1 dof: bound at mean + 7 sd
        assert _chi_square(counts, n / m) < (m - 1) + 7 * math.sqrt(2 * (m - 1))


def test_randint_large_range():
    r = random.randint(random.key(8), (10000,), -(2**40), 2**40)
    assert r.min() >= -(2**40) and r.max() < 2**40
    assert r.min() < -(2**39) and r.max() > 2**39


@pytest.mark.parametrize("n", [0, 1, 2, 10, 1000])
def test_permutation_is_a_permutation(n):
    p = random.permutation(random.key(0), n)
    assert p.dtype == torch.int64 and p.shape == (n,)
    assert torch.equal(p.sort().values, torch.arange(n))


def test_permutation_depends_on_key_and_is_uniform():
    assert not torch.equal(random.permutation(random.key(0), 50), random.permutation(random.key(1), 50))
    # position of element 0 over many keys: uniform over 5 slots
    keys = random.split(random.key(0), 5000)
    pos = torch.func.vmap(lambda k: random.permutation(k, 5).argsort()[0])(keys)
    assert _chi_square(torch.bincount(pos, minlength=5), 1000.0) < 4 + 7 * math.sqrt(8)


# ---------------------------------------------------------------- properties

@given(seed=st.integers(-(2**63), 2**64 - 1),
       shape=st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple),
       dtype=st.sampled_from(FLOATS))
def test_property_shapes_dtypes_determinism(seed, shape, dtype):
    k = random.key(seed)
    assert ((k >= 0) & (k <= M32)).all()
    u = random.uniform(k, shape, dtype, low=-1.0, high=2.0)
    assert u.shape == shape and u.dtype == dtype
    assert ((u >= -1.0) & (u < 2.0)).all()
    assert torch.equal(u, random.uniform(k, shape, dtype, low=-1.0, high=2.0))
    z = random.normal(k, shape, dtype)
    assert z.shape == shape and torch.isfinite(z).all()
    assert random.bernoulli(k, 0.5, shape).shape == shape
    r = random.randint(k, shape, -3, 4)
    assert r.shape == shape and ((r >= -3) & (r < 4)).all()


@given(seed=st.integers(0, 2**32), n=st.integers(0, 64), num=st.integers(1, 6))
def test_property_permutation_and_split(seed, n, num):
    k = random.key(seed)
    assert torch.equal(random.permutation(k, n).sort().values, torch.arange(n))
    ks = random.split(k, num)
    assert ks.shape == (num, 2)
    assert len({tuple(r) for r in ks.tolist()}) == num


@given(seed=st.integers(0, 2**32), data=st.integers(-(2**63), 2**63 - 1))
def test_property_fold_in_int_vs_tensor(seed, data):
    k = random.key(seed)
    assert torch.equal(random.fold_in(k, data), random.fold_in(k, torch.tensor(data)))


# ---------------------------------------------------------------- bad inputs

K = random.key(0)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: random.key(1.5), TypeError, r"random\.key: seed must be an int"),
    (lambda: random.key("3"), TypeError, r"random\.key: seed must be an int"),
    (lambda: random.key(True), TypeError, r"random\.key: seed must be an int"),
    (lambda: random.uniform(torch.zeros(2), (3,)), TypeError, r"random\.uniform: key must be an int64.*float32 \[2\]"),
    (lambda: random.split([0, 1]), TypeError, r"random\.split: key must be an int64 tensor"),
    (lambda: random.normal(torch.zeros(3, dtype=torch.int64), (3,)), ValueError, r"random\.normal: key must have shape \[2\].*int64 \[3\]"),
    (lambda: random.uniform(K, (2, -1)), ValueError, r"random\.uniform: shape must be non-negative ints; got \(2, -1\)"),
    (lambda: random.normal(K, (2.0,)), ValueError, r"random\.normal: shape must be non-negative ints"),
    (lambda: random.uniform(K, (2,), low=1.0, high=1.0), ValueError, r"random\.uniform: need low < high; got low=1\.0, high=1\.0"),
    (lambda: random.uniform(K, (2,), low=2.0, high=1.0), ValueError, r"random\.uniform: need low < high"),
    (lambda: random.uniform(K, (2,), low="0"), TypeError, r"random\.uniform: low and high must be Python numbers"),
    (lambda: random.uniform(K, (2,), torch.int64), TypeError, r"random\.uniform: dtype must be a floating torch\.dtype; got torch\.int64"),
    (lambda: random.normal(K, (2,), "float32"), TypeError, r"random\.normal: dtype must be a floating torch\.dtype"),
    (lambda: random.bernoulli(K, 1.5, (2,)), ValueError, r"random\.bernoulli: p must lie in \[0, 1\]; got 1\.5"),
    (lambda: random.bernoulli(K, -0.1, (2,)), ValueError, r"random\.bernoulli: p must lie in \[0, 1\]"),
    (lambda: random.bernoulli(K, "half", (2,)), TypeError, r"random\.bernoulli: p must be a float or a tensor"),
    (lambda: random.randint(K, (2,), 5, 5), ValueError, r"random\.randint: need low < high"),
    (lambda: random.randint(K, (2,), 0, 2**63), ValueError, r"random\.randint: need low < high <= low \+ 2\*\*62"),
    (lambda: random.randint(K, (2,), 0.0, 3), TypeError, r"random\.randint: low and high must be ints"),
    (lambda: random.permutation(K, -1), ValueError, r"random\.permutation: n must be a non-negative int; got -1"),
    (lambda: random.permutation(K, 2.0), ValueError, r"random\.permutation: n must be a non-negative int"),
    (lambda: random.split(K, 0), ValueError, r"random\.split: num must be a positive int; got 0"),
    (lambda: random.fold_in(K, 1.5), TypeError, r"random\.fold_in: data must be an int"),
    (lambda: random.fold_in(K, torch.tensor(1.5)), TypeError, r"random\.fold_in: data must be an int or 0-d integer tensor"),
    (lambda: random.fold_in(K, torch.tensor([1, 2])), TypeError, r"random\.fold_in: data must be an int or 0-d"),
    (lambda: random.bits(K, -2), ValueError, r"random\.bits: n must be a non-negative int"),
], ids=lambda v: None)
def test_bad_input_raises(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------- the cipher operator

def _threefry_reference(k0: int, k1: int, x0: int, x1: int) -> tuple[int, int]:
    """Threefry-2x32-20 on Python ints, masked after every step (the textbook form)."""
    rot = (13, 15, 26, 6, 17, 29, 16, 24)
    ks = (k0, k1, k0 ^ k1 ^ 0x1BD11BDA)
    x0, x1 = (x0 + ks[0]) & M32, (x1 + ks[1]) & M32
    for i in range(20):
        x0 = (x0 + x1) & M32
        x1 = (((x1 << rot[i % 8]) | (x1 >> (32 - rot[i % 8]))) & M32) ^ x0
        if i % 4 == 3:
            j = i // 4 + 1
            x0, x1 = (x0 + ks[j % 3]) & M32, (x1 + ks[(j + 1) % 3] + j) & M32
    return x0, x1


def _words(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return random.randint(random.key(seed), shape, 0, 2**32)


def test_operator_equals_reference_with_broadcasting():
    k0, k1, x0, x1 = _words(0, (3, 1)), _words(1, (3, 1)), _words(2, (4,)), _words(3, (3, 4))
    y0, y1 = _threefry2x32(k0, k1, x0, x1)
    assert y0.shape == y1.shape == (3, 4) and y0.dtype == torch.int64
    for i in range(3):
        for j in range(4):
            want = _threefry_reference(int(k0[i, 0]), int(k1[i, 0]), int(x0[j]), int(x1[i, j]))
            assert (int(y0[i, j]), int(y1[i, j])) == want


def test_eager_draws_skip_the_operator_only_where_that_is_safe():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    from deepfn.random import threefry as _threefry
    words = [_words(i, (4,)) for i in range(4)]
    assert _threefry.directly_callable(*words)
    want = torch.ops.deepfn.threefry2x32.default(*words)
    got = _threefry2x32(*words)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    plain = random.bits(random.key(3), 9)
    with FlopCounterMode(display=False):            # a dispatch mode sees the operator
        assert not _threefry.directly_callable(*words)
        assert torch.equal(random.bits(random.key(3), 9), plain)
    with FakeTensorMode() as mode:                  # fake words hold no memory for the C loop
        fake = [mode.from_tensor(w) for w in words]
        assert not _threefry.directly_callable(*fake)
        assert _threefry2x32(*fake)[0].shape == (4,)
    seen = []
    torch.func.vmap(lambda k: seen.append(_threefry.directly_callable(k)) or k)(words[0])
    assert seen == [False]                          # batched under vmap: the operator's rule
    assert not _threefry.directly_callable(torch.nn.Parameter(words[0].float()))   # a subclass


def test_operator_is_one_graph_node():
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm.graph)
        return gm.forward

    torch.compile(lambda k: random.uniform(k, (8,)), backend=backend, fullgraph=True)(random.key(0))
    calls = [n for n in graphs[0].nodes if n.op == "call_function"]
    assert sum(n.target is torch.ops.deepfn.threefry2x32.default for n in calls) == 1
    assert len(calls) < 30          # the unrolled cipher alone was ~160 nodes


@pytest.mark.parametrize("in_dims", [(0, None, None, None), (None, None, 1, None), (1, 0, None, 0)])
def test_operator_vmap_rule_equals_loop(in_dims):
    # unbatched words are [3, 4]; batched ones hold 5 examples of logical shape [4]
    args = [_words(i, (3, 4)) if d is None else _words(i, (5, 4) if d == 0 else (4, 5))
            for i, d in enumerate(in_dims)]
    y0, y1 = torch.func.vmap(_threefry2x32, in_dims=in_dims)(*args)
    assert y0.shape == (5, 3, 4)
    for b in range(5):
        e0, e1 = _threefry2x32(*(a if d is None else a.select(d, b) for a, d in zip(args, in_dims, strict=True)))
        assert torch.equal(y0[b], e0) and torch.equal(y1[b], e1)


def test_compiled_operator_equals_eager_large_and_broadcast():
    # Compiled (on the CPU: an extern call of the C loop; without it, or on an accelerator, a
    # fused kernel, see tests/random/test_native.py) against the eager kernel.
    k0, k1, x0, x1 = _words(0, (3, 1)), _words(1, (1,)), _words(2, (700,)), _words(3, (3, 700))
    compiled = torch.compile(_threefry2x32, fullgraph=True)(k0, k1, x0, x1)
    eager = _threefry2x32(k0, k1, x0, x1)
    assert torch.equal(compiled[0], eager[0]) and torch.equal(compiled[1], eager[1])
    from torch._inductor.lowering import lowerings
    assert torch.ops.deepfn.threefry2x32.default in lowerings    # deepfn's lowering, not a generic fallback


def test_compiled_vmap_grad_with_dropout_equals_eager():
    from deepfn.nn.dropout import dropout

    def loss(w, x, k):
        k_a, k_b = random.split(k)
        h = dropout(torch.tanh(x @ w), 0.3, k_a, True)
        return dropout(h, 0.3, random.fold_in(k_b, 3), True).sum()

    w = random.normal(random.key(0), (6, 6), torch.float64)
    x = random.normal(random.key(1), (4, 6), torch.float64)
    keys = random.split(random.key(2), 4)
    per_example = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))
    eager = per_example(w, x, keys)
    compiled = torch.compile(per_example, fullgraph=True)(w, x, keys)
    torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=1e-12)
    assert torch.equal(compiled == 0, eager == 0)
    assert not torch.equal(eager[0], eager[1])       # a batch of keys: independent masks


def test_bernoulli_reads_a_tensor_p_only_eagerly():
    """The range check of a tensor ``p`` needs its values: eagerly it raises, while compiled
    (fullgraph) and under vmap it is skipped rather than breaking the graph or the transform."""
    key = random.key(0)
    with pytest.raises(ValueError, match=r"bernoulli: p must lie in \[0, 1\]; got 1\.5 in float32 \[2\]"):
        random.bernoulli(key, torch.tensor([0.5, 1.5]), (2,))
    p = torch.tensor([0.25, 0.75])
    compiled = torch.compile(lambda k, p: random.bernoulli(k, p, (2,)), fullgraph=True)
    assert torch.equal(compiled(key, p), random.bernoulli(key, p, (2,)))
    batched = torch.func.vmap(lambda p: random.bernoulli(key, p, (2,)))(p.expand(3, 2))
    assert batched.shape == (3, 2)

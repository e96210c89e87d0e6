"""MultiHeadAttention: oracle against torch.nn.MultiheadAttention, masks, transforms, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.func import grad, vmap

from deepfn import interop, random, tree
from deepfn.nn import MultiHeadAttention, causal_mask, padding_mask
from tests.utils import TOL, assert_trees_close

E, H = 16, 4
IMPLS = ["auto", "math", "sdpa"]


def twin(dtype=torch.float32, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return torch.nn.MultiheadAttention(E, H, dropout=dropout, batch_first=True).to(dtype).eval()


def torch_mask(mask, b, t, s):
    """deepfn's ``True`` = may attend -> torch's 3-d ``True`` = masked."""
    return ~mask.expand(b, H, t, s).reshape(b * H, t, s)


def random_mask(b, t, s, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, 1, t, s, generator=g) > 0.4
    mask[..., 0] = True  # torch returns NaN on fully masked rows; those get their own test
    return mask


# -- parameters ------------------------------------------------------------------------

def test_names_and_shapes_equal_state_dict(getkey):
    params, state = MultiHeadAttention(E, H).init(getkey())
    assert state == {}
    sd = twin().state_dict()
    flat = tree.flatten(params)
    assert list(flat) == list(sd)
    assert {k: v.shape for k, v in flat.items()} == {k: v.shape for k, v in sd.items()}


def test_init_follows_torch(getkey):
    params, _ = MultiHeadAttention(64, 4).init(getkey())
    w, wo = params["in_proj_weight"], params["out_proj"]["weight"]
    xavier = math.sqrt(6.0 / (64 + 3 * 64))
    assert w.abs().max() <= xavier and w.abs().max() > 0.9 * xavier
    assert w.std().item() == pytest.approx(xavier / math.sqrt(3), rel=0.05)
    assert wo.abs().max() <= 64 ** -0.5 and wo.abs().max() > 0.9 * 64 ** -0.5
    assert not params["in_proj_bias"].any() and not params["out_proj"]["bias"].any()
    assert all(v.dtype == torch.float32 for v in tree.leaves(params))


def test_init_is_a_function_of_the_key(getkey):
    k1, k2 = getkey(), getkey()
    mha = MultiHeadAttention(E, H)
    assert_trees_close(mha.init(k1)[0], mha.init(k1)[0], rtol=0, atol=0)
    assert not torch.equal(mha.init(k1)[0]["in_proj_weight"], mha.init(k2)[0]["in_proj_weight"])


def test_to_torch_round_trip(getkey):
    mha = MultiHeadAttention(E, H)
    params, state = mha.init(getkey())
    module = interop.to_torch(mha, params, state, twin())
    back, _ = interop.from_torch(mha, module)
    assert_trees_close(back, params, rtol=0, atol=0)


# -- oracle ----------------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_matches_torch_outputs_and_grads(dtype, impl, cross, masked):
    module = twin(dtype)
    mha = MultiHeadAttention(E, H, impl=impl)
    params, state = interop.from_torch(mha, module)
    g = torch.Generator().manual_seed(1)
    b, t, s = 3, 5, (7 if cross else 5)
    x = torch.randn(b, t, E, generator=g, dtype=dtype)
    kv = torch.randn(b, s, E, generator=g, dtype=dtype) if cross else None
    w = torch.randn(b, t, E, generator=g, dtype=dtype)
    mask = random_mask(b, t, s) if masked else None

    def loss(p, x, kv):
        return (mha.apply(p, state, x, kv, mask)[0] * w).sum()

    y = mha.apply(params, state, x, kv, mask)[0]
    gp, gx, gkv = grad(loss, argnums=(0, 1, 2))(params, x, kv if cross else x.clone())

    xt = x.clone().requires_grad_(True)
    kvt = kv.clone().requires_grad_(True) if cross else xt
    tm = torch_mask(mask, b, t, s) if masked else None
    ref = module(xt, kvt, kvt, attn_mask=tm, need_weights=False)[0]
    (ref * w).sum().backward()
    tol = TOL[dtype]
    assert_trees_close(y, ref.detach(), **tol)
    assert_trees_close(gp, tree.unflatten({n: p.grad for n, p in module.named_parameters()}), **tol)
    if cross:
        assert_trees_close((gx, gkv), (xt.grad, kvt.grad), **tol)
    else:  # self-attention: the gradient through query and key_value is one tensor in torch
        assert_trees_close(mha_self_grad(mha, params, state, x, mask, w), xt.grad, **tol)


def mha_self_grad(mha, params, state, x, mask, w):
    return grad(lambda x: (mha.apply(params, state, x, None, mask)[0] * w).sum())(x)


def test_matches_torch_fast_path_under_no_grad():
    module = twin()
    mha = MultiHeadAttention(E, H)
    params, state = interop.from_torch(mha, module)
    x = torch.randn(2, 6, E)
    pad = padding_mask(torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]), 0)
    with torch.no_grad():
        ref = module(x, x, x, key_padding_mask=~pad[:, 0, 0], need_weights=False)[0]
    y = mha.apply(params, state, x, mask=pad)[0]
    assert_trees_close(y, ref, rtol=1e-5, atol=1e-5)


def test_unbatched_input_matches_batched(getkey):
    mha = MultiHeadAttention(E, H)
    params, state = mha.init(getkey())
    x, kv = torch.randn(5, E), torch.randn(7, E)
    mask = random_mask(1, 5, 7)[0]
    assert_trees_close(mha.apply(params, state, x, kv, mask)[0],
                       mha.apply(params, state, x[None], kv[None], mask[None])[0][0])


def test_cached_keys_and_values_equal_apply(getkey):
    mha = MultiHeadAttention(E, H)
    params, state = mha.init(getkey())
    x = torch.randn(2, 6, E)
    full = mha.apply(params, state, x, mask=causal_mask(6))[0]
    k, v = mha.project_kv(params, x)
    assert k.shape == v.shape == (2, H, 6, E // H)
    assert mha.project_q(params, x).shape == (2, H, 6, E // H)
    steps = [mha.attend(params, x[:, i:i + 1], k[:, :, :i + 1], v[:, :, :i + 1]) for i in range(6)]
    assert_trees_close(torch.cat(steps, dim=1), full)


# -- masks -----------------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
@given(data=st.data())
def test_values_at_masked_keys_do_not_change_outputs(impl, data):
    b, t, s = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 6))
    lengths = data.draw(st.lists(st.integers(1, s), min_size=b, max_size=b))
    seed = data.draw(st.integers(0, 2**16))
    mha = MultiHeadAttention(E, H, impl=impl)
    params, state = mha.init(random.key(seed))
    x, kv = random.normal(random.key(seed + 1), (b, t, E)), random.normal(random.key(seed + 2), (b, s, E))
    valid = torch.arange(s)[None, :] < torch.tensor(lengths)[:, None]
    other = torch.where(valid[..., None], kv, 100.0 * random.normal(random.key(seed + 3), (b, s, E)))
    mask = valid[:, None, None, :]
    assert_trees_close(mha.apply(params, state, x, other, mask)[0], mha.apply(params, state, x, kv, mask)[0])


@pytest.mark.parametrize("impl", IMPLS)
def test_causal_receptive_field(getkey, impl):
    """Flax's test: the gradient of output t with respect to inputs after t is exactly zero."""
    mha = MultiHeadAttention(E, H, impl=impl)
    params, state = mha.init(getkey())
    t = 5
    x = torch.randn(2, t, E)
    for i in range(t):
        g = grad(lambda x, i=i: mha.apply(params, state, x, mask=causal_mask(t))[0][:, i].sum())(x)
        assert torch.all(g[:, i + 1:] == 0), f"output {i} depends on later inputs"
        assert torch.all(g[:, : i + 1].abs().sum(-1) > 0)


@pytest.mark.parametrize("impl", IMPLS)
def test_fully_masked_rows_give_zeros_and_finite_grads(getkey, impl):
    mha = MultiHeadAttention(E, H, impl=impl)
    params, state = mha.init(getkey())
    x = torch.randn(2, 3, E)
    mask = torch.ones(2, 1, 3, 3, dtype=torch.bool)
    mask[0, :, 1] = False          # row 1 of example 0 sees nothing
    mask[1] = False                # example 1 sees nothing at all
    y = mha.apply(params, state, x, mask=mask)[0]
    bias_only = params["out_proj"]["bias"]
    assert torch.equal(y[0, 1], bias_only.expand_as(y[0, 1])) and torch.equal(y[1], bias_only.expand_as(y[1]))
    params = {**params, "out_proj": {**params["out_proj"], "bias": torch.randn(E)}}
    gp, gx = grad(lambda p, x: mha.apply(p, state, x, mask=mask)[0].pow(2).sum(), argnums=(0, 1))(params, x)
    assert all(torch.isfinite(v).all() for v in tree.leaves((gp, gx)))
    assert torch.all(gx[1] == 0)   # nothing flows through fully masked rows


def test_zero_rows_before_out_proj(getkey):
    """With zero out_proj bias a fully masked query row is exactly zero."""
    mha = MultiHeadAttention(E, H)
    params, state = mha.init(getkey())
    y = mha.apply(params, state, torch.randn(1, 2, E), mask=torch.zeros(1, 1, 2, 2, dtype=torch.bool))[0]
    assert torch.equal(y, torch.zeros_like(y))


# -- transforms ------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:There is a performance drop")  # impl="sdpa" under vmap: slow, still right
@pytest.mark.parametrize("impl", IMPLS)
def test_vmap_over_stacked_params_equals_loop(getkey, impl):
    mha = MultiHeadAttention(E, H, impl=impl)
    ps = [mha.init(getkey())[0] for _ in range(3)]
    x, mask = torch.randn(2, 4, E), random_mask(2, 4, 4)
    out = vmap(lambda p: mha.apply(p, {}, x, mask=mask)[0])(tree.stack(ps))
    assert_trees_close(out, torch.stack([mha.apply(p, {}, x, mask=mask)[0] for p in ps]))


def test_vmap_over_examples_and_per_example_grads(getkey):
    mha = MultiHeadAttention(E, H)
    params, _ = mha.init(getkey())
    x, mask = torch.randn(3, 4, E), random_mask(3, 4, 4)[:, 0]
    assert_trees_close(vmap(lambda x, m: mha.apply(params, {}, x, mask=m)[0])(x, mask),
                       mha.apply(params, {}, x, mask=mask[:, None])[0])
    loss = lambda p, x, m: mha.apply(p, {}, x, mask=m)[0].pow(2).sum()  # noqa: E731
    per_ex = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, mask)
    loop = tree.stack([grad(loss)(params, x[i], mask[i]) for i in range(3)])
    assert_trees_close(per_ex, loop)


def test_auto_uses_sdpa_only_outside_transforms_and_dropout(getkey, monkeypatch):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    mha = MultiHeadAttention(E, H, dropout=0.1)
    params, state = mha.init(getkey())
    x = torch.randn(2, 3, E)
    mha.apply(params, state, x)
    assert len(calls) == 1
    mha.apply(params, state, x, key=getkey(), train=True)                 # dropout: keys, not SDPA's RNG
    vmap(lambda p: mha.apply(p, state, x)[0])(tree.stack([params, params]))  # no batching rule
    grad(lambda p: mha.apply(p, state, x)[0].sum())(params)
    MultiHeadAttention(E, H, impl="math").apply(params, state, x)
    assert len(calls) == 1


@pytest.mark.parametrize("impl", ["auto", "math"])
def test_compile_fullgraph_equals_eager(getkey, impl):
    mha = MultiHeadAttention(8, 2, impl=impl)
    params, _ = mha.init(getkey())
    x, mask = torch.randn(2, 3, 8), random_mask(2, 3, 3)

    def fn(p, x):
        return grad(lambda p: mha.apply(p, {}, x, mask=mask)[0].pow(2).sum())(p), mha.apply(p, {}, x, mask=mask)[0]

    assert_trees_close(torch.compile(fn, fullgraph=True)(params, x), fn(params, x))


# -- dropout and precision -------------------------------------------------------------

def test_dropout_is_a_function_of_the_key(getkey):
    mha = MultiHeadAttention(E, H, dropout=0.5)
    params, state = mha.init(getkey())
    x, k1, k2 = torch.randn(2, 5, E), getkey(), getkey()
    y1 = mha.apply(params, state, x, key=k1, train=True)[0]
    assert torch.equal(y1, mha.apply(params, state, x, key=k1, train=True)[0])
    assert not torch.allclose(y1, mha.apply(params, state, x, key=k2, train=True)[0])
    assert not torch.allclose(y1, mha.apply(params, state, x)[0])
    assert torch.equal(mha.apply(params, state, x, key=k1)[0], mha.apply(params, state, x)[0])


def test_dropout_keeps_mean_of_weights(getkey):
    """Inverted dropout on the attention weights: averaged over keys it is unbiased."""
    mha = MultiHeadAttention(E, H, dropout=0.3)
    params, state = mha.init(getkey())
    x = torch.randn(1, 4, E)
    keys = random.split(getkey(), 400)
    ys = vmap(lambda k: mha.apply(params, state, x, key=k, train=True)[0], randomness="error")(keys)
    assert torch.allclose(ys.mean(0), mha.apply(params, state, x)[0], atol=0.05)


def test_dropout_without_key_raises(getkey):
    mha = MultiHeadAttention(E, H, dropout=0.1)
    params, state = mha.init(getkey())
    with pytest.raises(ValueError, match=r"MultiHeadAttention\(.*\)\.apply: train=True needs a random key"):
        mha.apply(params, state, torch.randn(1, 2, E), train=True)
    MultiHeadAttention(E, H).apply(params, state, torch.randn(1, 2, E), train=True)  # no dropout, no key


@pytest.mark.parametrize("impl", ["auto", "math"])
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_inputs_keep_dtype_and_accuracy(getkey, half, impl):
    mha = MultiHeadAttention(E, H, impl=impl)
    params, state = mha.init(getkey())
    x = torch.randn(2, 4, E)
    y = mha.apply(tree.cast(params, half), state, x.to(half), mask=causal_mask(4))[0]
    assert y.dtype == half
    assert torch.allclose(y.float(), mha.apply(params, state, x, mask=causal_mask(4))[0], atol=5e-2)


# -- rejected inputs -------------------------------------------------------------------

@pytest.fixture
def mha_params(getkey):
    mha = MultiHeadAttention(E, H)
    return mha, mha.init(getkey())[0]


def test_rejects_float_mask(mha_params):
    mha, p = mha_params
    with pytest.raises(TypeError, match=r"MultiHeadAttention\(d_model=16, n_heads=4.*mask must be bool .*additive"):
        mha.apply(p, {}, torch.randn(2, 3, E), mask=torch.zeros(2, 1, 3, 3))


def test_rejects_wrong_d_model(mha_params):
    mha, p = mha_params
    with pytest.raises(ValueError, match=r"query must have size 16 \(d_model\) in axis -1; got float32 \[2, 3, 8\]"):
        mha.apply(p, {}, torch.randn(2, 3, 8))


def test_rejects_unbroadcastable_mask(mha_params):
    mha, p = mha_params
    with pytest.raises(ValueError, match=r"mask must be bool and broadcastable to \[2, 4, 3, 5\].*got bool \[2, 5\]"):
        mha.apply(p, {}, torch.randn(2, 3, E), torch.randn(2, 5, E), mask=torch.ones(2, 5, dtype=torch.bool))


def test_rejects_wrong_rank(mha_params):
    mha, p = mha_params
    with pytest.raises(ValueError, match=r"query must be 2-d or 3-d \[B, T, d_model\]; got float32 \[16\]"):
        mha.apply(p, {}, torch.randn(E))


def test_rejects_mixed_dtypes(mha_params):
    mha, p = mha_params
    with pytest.raises(TypeError, match=r"key_value must have dtype float32 like query; got float64"):
        mha.apply(p, {}, torch.randn(2, 3, E), torch.randn(2, 3, E, dtype=torch.float64))


def test_rejects_integer_query(mha_params):
    mha, p = mha_params
    with pytest.raises(TypeError, match=r"query must be floating point; got int64"):
        mha.apply(p, {}, torch.zeros(2, 3, E, dtype=torch.int64))


def test_rejects_batch_mismatch(mha_params):
    mha, p = mha_params
    with pytest.raises(ValueError, match=r"key_value must have query's batch size 2; got float32 \[3, 4, 16\]"):
        mha.apply(p, {}, torch.randn(2, 3, E), torch.randn(3, 4, E))


def test_attend_rejects_wrong_cache_shape(mha_params):
    mha, p = mha_params
    k = torch.randn(2, 2, 3, 8)
    with pytest.raises(ValueError, match=r"\.attend: k must be \[2, 4, S, 4\]; got float32 \[2, 2, 3, 8\]"):
        mha.attend(p, torch.randn(2, 1, E), k, k)


def test_rejects_d_model_not_divisible_by_heads():
    with pytest.raises(ValueError, match="MultiHeadAttention: d_model must be divisible by n_heads; got d_model=10, n_heads=4"):
        MultiHeadAttention(10, 4)


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5])
def test_rejects_dropout_outside_unit_interval(rate):
    with pytest.raises(ValueError, match=r"MultiHeadAttention: dropout must be a float in \[0, 1\)"):
        MultiHeadAttention(E, H, dropout=rate)


def test_rejects_unknown_impl():
    with pytest.raises(ValueError, match=r"MultiHeadAttention: impl must be one of \['auto', 'sdpa', 'math'\]"):
        MultiHeadAttention(E, H, impl="flash")


def test_rejects_non_positive_sizes():
    with pytest.raises(ValueError, match="MultiHeadAttention: n_heads must be a positive int; got 0"):
        MultiHeadAttention(E, 0)

"""Transformer encoder/decoder layers against torch.nn twins; cached decoding; errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import grad, vmap

from deepfn import interop, random, tree
from deepfn.nn import (
    TransformerDecoderLayer,
    TransformerEncoderLayer,
    causal_mask,
    combine,
    padding_mask,
)
from tests.utils import TOL, assert_trees_close

E, H, FF = 16, 4, 24
LAYERS = {"encoder": (TransformerEncoderLayer, torch.nn.TransformerEncoderLayer),
          "decoder": (TransformerDecoderLayer, torch.nn.TransformerDecoderLayer)}


def make(kind, norm_first=False, activation="relu", dtype=torch.float32, dropout=0.1, seed=0):
    ours, theirs = LAYERS[kind]
    torch.manual_seed(seed)
    module = theirs(E, H, FF, dropout, activation, batch_first=True, norm_first=norm_first).to(dtype).eval()
    block = ours(E, H, FF, dropout, activation, norm_first)
    params, state = interop.from_torch(block, module)
    return block, module, params, state


def torch_mask(mask, b, t, s):
    return ~mask.expand(b, H, t, s).reshape(b * H, t, s)


@pytest.mark.parametrize("kind", LAYERS)
def test_names_and_shapes_equal_state_dict(kind, getkey):
    ours, theirs = LAYERS[kind]
    params, state = ours(E, H, FF).init(getkey())
    sd = theirs(E, H, FF, batch_first=True).state_dict()
    flat = tree.flatten(params)
    assert state == {} and list(flat) == list(sd)
    assert {k: v.shape for k, v in flat.items()} == {k: v.shape for k, v in sd.items()}


@pytest.mark.parametrize("kind", LAYERS)
def test_to_torch_round_trip(kind, getkey):
    block, module, _, _ = make(kind)
    params, state = block.init(getkey())
    back, _ = interop.from_torch(block, interop.to_torch(block, params, state, module))
    assert_trees_close(back, params, rtol=0, atol=0)


@pytest.mark.parametrize("norm_first", [False, True], ids=["postLN", "preLN"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("kind", LAYERS)
def test_matches_torch_outputs_and_grads(kind, norm_first, activation, dtype):
    block, module, params, state = make(kind, norm_first, activation, dtype)
    g = torch.Generator().manual_seed(3)
    b, t, s = 3, 5, 6
    x = torch.randn(b, t, E, generator=g, dtype=dtype)
    mem = torch.randn(b, s, E, generator=g, dtype=dtype)
    w = torch.randn(b, t, E, generator=g, dtype=dtype)
    src_pad = padding_mask(torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4]), 0)
    if kind == "encoder":
        mask = padding_mask(torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [1] + [0] * 4]), 0)
        run = lambda p, x, mem: block.apply(p, state, x, mask)[0]  # noqa: E731
        ref_fn = lambda x, mem: module(x, src_mask=torch_mask(mask, b, t, t))  # noqa: E731
    else:
        self_mask = causal_mask(t)
        run = lambda p, x, mem: block.apply(p, state, x, mem, self_mask, src_pad)[0]  # noqa: E731
        ref_fn = lambda x, mem: module(x, mem, tgt_mask=torch_mask(self_mask, b, t, t),  # noqa: E731
                                       memory_mask=torch_mask(src_pad, b, t, s))
    y = run(params, x, mem)
    gp, gx, gm = grad(lambda p, x, m: (run(p, x, m) * w).sum(), argnums=(0, 1, 2))(params, x, mem)

    xt, mt = x.clone().requires_grad_(True), mem.clone().requires_grad_(True)
    ref = ref_fn(xt, mt)
    (ref * w).sum().backward()
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else TOL[dtype]
    assert_trees_close(y, ref.detach(), **tol)
    assert_trees_close(gp, tree.unflatten({n: p.grad for n, p in module.named_parameters()}), **tol)
    assert_trees_close(gx, xt.grad, **tol)
    if kind == "decoder":
        assert_trees_close(gm, mt.grad, **tol)


@pytest.mark.parametrize("norm_first", [False, True], ids=["postLN", "preLN"])
def test_matches_torch_encoder_fast_path(norm_first):
    """torch's eval + no_grad fast path (fused kernel, nested tensors for padding)."""
    block, module, params, state = make("encoder", norm_first)
    x = torch.randn(2, 5, E)
    pad = padding_mask(torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]), 0)
    with torch.no_grad():
        ref = module(x, src_key_padding_mask=~pad[:, 0, 0])
    y = block.apply(params, state, x, pad)[0]
    valid = pad[:, 0, 0]  # torch's fast path returns zeros at padded queries
    assert_trees_close(y[valid], ref[valid], rtol=1e-4, atol=1e-5)


def test_custom_callable_activation_matches_torch():
    block, module, params, state = make("encoder", activation=F.silu)
    x = torch.randn(2, 4, E)
    assert_trees_close(block.apply(params, state, x)[0], module(x).detach(), rtol=1e-4, atol=1e-5)


# -- causality and cached decoding -----------------------------------------------------

@pytest.mark.parametrize("kind", LAYERS)
def test_causal_receptive_field(kind, getkey):
    block = LAYERS[kind][0](E, H, FF)
    params, state = block.init(getkey())
    t = 4
    x, mem = torch.randn(2, t, E), torch.randn(2, 3, E)
    extra = (mem,) if kind == "decoder" else ()
    w = torch.randn(E)  # a plain sum of a post-LN output is constant: weight the features
    for i in range(t):
        g = grad(lambda x, i=i: (block.apply(params, state, x, *extra, causal_mask(t))[0][:, i] * w).sum())(x)
        assert torch.all(g[:, i + 1:] == 0) and torch.all(g[:, : i + 1].abs().sum(-1) > 0)


@pytest.mark.parametrize("norm_first", [False, True], ids=["postLN", "preLN"])
@given(data=st.data())
def test_cached_decoding_equals_full_causal_call(norm_first, data):
    t, s = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 5))
    chunks = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=6))
    seed = data.draw(st.integers(0, 2**16))
    block = TransformerDecoderLayer(E, H, FF, norm_first=norm_first)
    params, state = block.init(random.key(seed))
    x, mem = random.normal(random.key(seed + 1), (2, t, E)), random.normal(random.key(seed + 2), (2, s, E))
    cross = torch.arange(s)[None, None, None, :] < torch.tensor([s, 1])[:, None, None, None]
    full = block.apply(params, state, x, mem, causal_mask(t), cross)[0]
    memory_kv, cache, outs, p = block.project_memory(params, mem), None, [], 0
    for n in chunks:
        if p >= t:
            break
        y, cache = block.decode_step(params, x[:, p:p + n], memory_kv, cache, cross_mask=cross)
        outs.append(y)
        p = min(p + n, t)
        assert cache[0].shape == cache[1].shape == (2, H, p, E // H)
    assert_trees_close(torch.cat(outs, dim=1), full[:, :p], rtol=1e-5, atol=1e-5)


def test_decode_step_self_mask_restricts_the_prefix(getkey):
    block = TransformerDecoderLayer(E, H, FF)
    params, state = block.init(getkey())
    x, mem = torch.randn(2, 4, E), torch.randn(2, 3, E)
    pad = padding_mask(torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]]), 0)   # left-padded second row
    full = block.apply(params, state, x, mem, combine(causal_mask(4), pad))[0]
    mkv, cache, outs = block.project_memory(params, mem), None, []
    for i in range(4):
        y, cache = block.decode_step(params, x[:, i:i + 1], mkv, cache, self_mask=pad[..., : i + 1])
        outs.append(y)
    assert_trees_close(torch.cat(outs, 1)[1, 1:], full[1, 1:], rtol=1e-5, atol=1e-5)
    assert_trees_close(torch.cat(outs, 1)[0], full[0], rtol=1e-5, atol=1e-5)


def test_cache_prefix_is_reused_not_recomputed(getkey):
    """Changing a cached key changes the next step's output: the cache, not x, is read."""
    block = TransformerDecoderLayer(E, H, FF)
    params, _ = block.init(getkey())
    x, mem = torch.randn(1, 3, E), torch.randn(1, 2, E)
    mkv = block.project_memory(params, mem)
    _, cache = block.decode_step(params, x[:, :2], mkv)
    y1, _ = block.decode_step(params, x[:, 2:], mkv, cache)
    y2, _ = block.decode_step(params, x[:, 2:], mkv, (cache[0] + 1.0, cache[1]))
    assert not torch.allclose(y1, y2)


# -- transforms, dropout ---------------------------------------------------------------

@pytest.mark.parametrize("kind", LAYERS)
def test_vmap_over_stacked_params_equals_loop(kind, getkey):
    block = LAYERS[kind][0](E, H, FF)
    ps = [block.init(getkey())[0] for _ in range(2)]
    x, mem = torch.randn(2, 3, E), torch.randn(2, 4, E)
    extra = (mem,) if kind == "decoder" else ()
    out = vmap(lambda p: block.apply(p, {}, x, *extra, causal_mask(3))[0])(tree.stack(ps))
    assert_trees_close(out, torch.stack([block.apply(p, {}, x, *extra, causal_mask(3))[0] for p in ps]))


@pytest.mark.parametrize("kind", LAYERS)
def test_compile_fullgraph_equals_eager(kind, getkey):
    block = LAYERS[kind][0](8, 2, 8, norm_first=True)
    params, _ = block.init(getkey())
    x, mem = torch.randn(2, 3, 8), torch.randn(2, 2, 8)
    extra = (mem,) if kind == "decoder" else ()

    def fn(p, x):
        y = block.apply(p, {}, x, *extra, causal_mask(3))[0]
        if kind == "encoder":  # keep Inductor's work small: the decoder case covers the backward
            return y
        return grad(lambda p: block.apply(p, {}, x, *extra, causal_mask(3))[0].pow(2).sum())(p), y

    assert_trees_close(torch.compile(fn, fullgraph=True)(params, x), fn(params, x))


def test_decode_step_compiles(getkey):
    block = TransformerDecoderLayer(8, 2, 8)
    params, _ = block.init(getkey())
    x, mem = torch.randn(2, 3, 8), torch.randn(2, 2, 8)
    cache = block.decode_step(params, x[:, :2], block.project_memory(params, mem))[1]

    def step(p, x_new, mem, cache):
        return block.decode_step(p, x_new, block.project_memory(p, mem), cache)

    assert_trees_close(torch.compile(step, fullgraph=True)(params, x[:, 2:], mem, cache),
                       step(params, x[:, 2:], mem, cache))


def test_dropout_compiles_with_aot_eager(getkey):
    """Train mode (key-driven dropout everywhere) traces whole; Inductor is skipped for speed."""
    block = TransformerEncoderLayer(8, 2, 8)
    params, _ = block.init(getkey())
    x, k = torch.randn(2, 3, 8), getkey()
    fn = lambda p, x, k: block.apply(p, {}, x, key=k, train=True)[0]  # noqa: E731
    assert_trees_close(torch.compile(fn, fullgraph=True, backend="aot_eager")(params, x, k), fn(params, x, k))


@pytest.mark.parametrize("kind", LAYERS)
def test_dropout_is_a_function_of_the_key(kind, getkey):
    block = LAYERS[kind][0](E, H, FF, dropout=0.2)
    params, state = block.init(getkey())
    x, mem, k1, k2 = torch.randn(2, 4, E), torch.randn(2, 3, E), getkey(), getkey()
    extra = (mem,) if kind == "decoder" else ()
    y1, s1 = block.apply(params, state, x, *extra, key=k1, train=True)
    assert s1 == {}
    assert torch.equal(y1, block.apply(params, state, x, *extra, key=k1, train=True)[0])
    assert not torch.allclose(y1, block.apply(params, state, x, *extra, key=k2, train=True)[0])
    assert not torch.allclose(y1, block.apply(params, state, x, *extra)[0])
    no_drop = LAYERS[kind][0](E, H, FF, dropout=0.0)
    assert torch.equal(no_drop.apply(params, state, x, *extra, train=True)[0], no_drop.apply(params, state, x, *extra)[0])


@pytest.mark.parametrize("kind", LAYERS)
def test_dropout_without_key_raises(kind, getkey):
    block = LAYERS[kind][0](E, H, FF)
    params, state = block.init(getkey())
    extra = (torch.randn(1, 2, E),) if kind == "decoder" else ()
    with pytest.raises(ValueError, match=rf"{block.__class__.__name__}\(.*\)\.apply: train=True needs a random key"):
        block.apply(params, state, torch.randn(1, 2, E), *extra, train=True)


@settings(max_examples=6, deadline=None)
@given(kind=st.sampled_from(sorted(LAYERS)), seed=st.integers(0, 2**31), norm_first=st.booleans())
def test_apply_is_apply_keyed_with_layer_keys(kind, seed, norm_first):
    """``apply(key=k)`` derives its dropout keys as ``layer_keys(k)`` (one split, one row per site)."""
    block = LAYERS[kind][0](E, H, FF, dropout=0.3, norm_first=norm_first)
    params, state = block.init(random.key(seed))
    g = torch.Generator().manual_seed(seed)
    x, mem, k = torch.randn(2, 4, E, generator=g), torch.randn(2, 3, E, generator=g), random.key(seed + 1)
    extra = (mem,) if kind == "decoder" else ()
    keys = block.layer_keys(k)
    assert keys.shape == (block.n_keys, 2) and torch.equal(keys, random.split(k, block.n_keys))
    want = block.apply(params, state, x, *extra, key=k, train=True)[0]
    assert torch.equal(block.apply_keyed(params, state, x, *extra, keys=keys, train=True)[0], want)
    # Every site draws from its own row: changing one row changes the output.
    for i in range(block.n_keys):
        other = keys.clone()
        other[i] = random.fold_in(keys[i], 1)
        assert not torch.equal(block.apply_keyed(params, state, x, *extra, keys=other, train=True)[0], want), i
    assert block.layer_keys(k, train=False) is None and block.layer_keys(None, train=False) is None


@pytest.mark.parametrize("kind", LAYERS)
def test_apply_keyed_without_dropout_ignores_keys(kind, getkey):
    block = LAYERS[kind][0](E, H, FF, dropout=0.2)
    params, state = block.init(getkey())
    x, mem = torch.randn(2, 4, E), torch.randn(2, 3, E)
    extra = (mem,) if kind == "decoder" else ()
    plain = block.apply(params, state, x, *extra)[0]
    assert torch.equal(block.apply_keyed(params, state, x, *extra)[0], plain)
    assert torch.equal(block.apply_keyed(params, state, x, *extra, keys=random.split(getkey(), 3))[0], plain)


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("bad", [None, "short", "int32", "key"])
def test_apply_keyed_rejects_missing_or_misshaped_keys(kind, bad, getkey):
    block = LAYERS[kind][0](E, H, FF)
    params, state = block.init(getkey())
    extra = (torch.randn(1, 2, E),) if kind == "decoder" else ()
    keys = {None: None, "short": random.split(getkey(), block.n_keys - 1),
            "int32": random.split(getkey(), block.n_keys).int(), "key": getkey()}[bad]
    name = block.__class__.__name__
    match = (rf"{name}\(.*\)\.apply_keyed: train=True needs keys for dropout: int64 \[{block.n_keys}, 2\]" if bad is None
             else rf"{name}\(.*\)\.apply_keyed: keys must be int64 \[{block.n_keys}, 2\] \(one key per dropout site\); got")
    with pytest.raises(ValueError, match=match):
        block.apply_keyed(params, state, torch.randn(1, 2, E), *extra, keys=keys, train=True)


# -- rejected inputs -------------------------------------------------------------------

@pytest.mark.parametrize("kind", LAYERS)
def test_rejects_wrong_d_model(kind, getkey):
    block = LAYERS[kind][0](E, H, FF)
    params, state = block.init(getkey())
    extra = (torch.randn(1, 2, E),) if kind == "decoder" else ()
    with pytest.raises(ValueError, match=r"x must have size 16 \(d_model\) in axis -1; got float32 \[1, 2, 8\]"):
        block.apply(params, state, torch.randn(1, 2, 8), *extra)


@pytest.mark.parametrize("kind", LAYERS)
def test_rejects_float_mask(kind, getkey):
    block = LAYERS[kind][0](E, H, FF)
    params, state = block.init(getkey())
    extra = (torch.randn(1, 2, E),) if kind == "decoder" else ()
    with pytest.raises(TypeError, match=r"mask must be bool .*ambiguous"):
        block.apply(params, state, torch.randn(1, 2, E), *extra, torch.zeros(2, 2))


def test_rejects_unbroadcastable_cross_mask(getkey):
    block = TransformerDecoderLayer(E, H, FF)
    params, state = block.init(getkey())
    with pytest.raises(ValueError, match=r"cross_mask must be bool and broadcastable to \[1, 4, 2, 3\]"):
        block.apply(params, state, torch.randn(1, 2, E), torch.randn(1, 3, E), None, torch.ones(1, 1, 1, 2, dtype=torch.bool))


def test_rejects_memory_batch_mismatch(getkey):
    block = TransformerDecoderLayer(E, H, FF)
    params, state = block.init(getkey())
    with pytest.raises(ValueError, match=r"memory must have x's batch size 1; got float32 \[2, 3, 16\]"):
        block.apply(params, state, torch.randn(1, 2, E), torch.randn(2, 3, E))


def test_decode_step_rejects_bad_cache(getkey):
    block = TransformerDecoderLayer(E, H, FF)
    params, _ = block.init(getkey())
    mkv = block.project_memory(params, torch.randn(1, 3, E))
    with pytest.raises(ValueError, match=r"decode_step: cache must be a \(k, v\) tuple of torch.float32 \[1, 4, L, 4\]"):
        block.decode_step(params, torch.randn(1, 1, E), mkv, (torch.randn(1, 2, 3, 8),) * 2)


@pytest.mark.parametrize("kind", LAYERS)
def test_rejects_unknown_activation(kind):
    name = LAYERS[kind][0].__name__
    with pytest.raises(ValueError, match=rf"{name}: unknown activation 'swishy'; expected one of .*'relu'"):
        LAYERS[kind][0](E, H, FF, activation="swishy")


@pytest.mark.parametrize("kind", LAYERS)
def test_rejects_d_model_not_divisible_by_heads(kind):
    with pytest.raises(ValueError, match="d_model must be divisible by n_heads; got d_model=10, n_heads=4"):
        LAYERS[kind][0](10, 4, FF)


@pytest.mark.parametrize("rate", [1.0, -0.5])
def test_rejects_dropout_outside_unit_interval(rate):
    with pytest.raises(ValueError, match=r"TransformerEncoderLayer: dropout must be a float in \[0, 1\)"):
        TransformerEncoderLayer(E, H, FF, dropout=rate)


def test_rejects_non_positive_d_ff():
    with pytest.raises(ValueError, match="TransformerDecoderLayer: d_ff must be a positive int; got 0"):
        TransformerDecoderLayer(E, H, 0)

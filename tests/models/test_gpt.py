"""deepfn.models.GPT: GPT-2's initialisation, the cached decode step against the full forward,
causality, remat, vmap, compile, and one rejection test per bad input. The oracle against
transformers' GPT2LMHeadModel is tests/models/test_gpt2_interop.py."""

from __future__ import annotations

import math

import pytest
import torch

import deepfn
from deepfn import losses, random, tree
from deepfn.models import GPT
from deepfn.testing import check_block, check_causal
from tests.utils import assert_trees_close

TINY = dict(vocab_size=23, max_len=12, d_model=16, n_layers=2, n_heads=2)


def _ids(seed: int, b: int, t: int, vocab: int = 23) -> torch.Tensor:
    return random.randint(random.key(seed), (b, t), 0, vocab)


@pytest.fixture(scope="module")
def tiny():
    model = GPT(**TINY)
    params, state = model.init(random.key(0))
    return model, params, state


# -- structure and initialisation --------------------------------------------------------------

def test_defaults_are_gpt2_small():
    m = GPT(50257)
    assert (m.max_len, m.d_model, m.n_layers, m.n_heads, m.d_ff, m.dropout, m.tie_embeddings,
            m.layer_norm_eps) == (1024, 768, 12, 12, None, 0.0, True, 1e-5)
    assert m.layer.d_ff == 3072 and m.layer.activation == "gelu_tanh" and m.layer.norm_first


def test_param_tree_tied_and_untied(tiny):
    _, params, state = tiny
    assert state == {}
    flat = tree.flatten(params)
    assert flat["wte.weight"].shape == (23, 16) and flat["wpe.weight"].shape == (12, 16)
    assert flat["layers.1.linear1.weight"].shape == (64, 16) and "lm_head.weight" not in flat
    untied, _ = GPT(**TINY, tie_embeddings=False, d_ff=24).init(random.key(0))
    assert untied["lm_head"]["weight"].shape == (23, 16) and "bias" not in untied["lm_head"]
    assert untied["layers"]["0"]["linear1"]["weight"].shape == (24, 16)


def test_gpt2_initialisation_statistics():
    m = GPT(vocab_size=300, max_len=64, d_model=64, n_layers=8, n_heads=4)
    flat = tree.flatten(m.init(random.key(1))[0])
    residual = 0.02 / math.sqrt(2 * 8)
    for name, value in flat.items():
        if name.startswith("ln_f.") or ".norm" in name:
            want = torch.ones_like(value) if name.endswith("weight") else torch.zeros_like(value)
            assert torch.equal(value, want), name
        elif name.endswith("bias"):
            assert not bool(value.any()), name
        else:
            std = residual if name.endswith(("out_proj.weight", "linear2.weight")) else 0.02
            assert abs(float(value.std()) / std - 1) < 0.1, (name, float(value.std()), std)
            assert abs(float(value.mean())) < 0.2 * std, name


def test_fresh_loss_is_near_log_vocab():
    vocab = 96
    m = GPT(vocab_size=vocab, max_len=32, d_model=64, n_layers=2, n_heads=4)
    params, state = m.init(random.key(2))
    ids = _ids(3, 8, 33, vocab)
    logits, _ = m.apply(params, state, ids[:, :-1])
    loss = float(losses.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()))
    assert abs(loss - math.log(vocab)) < 0.05, loss


def test_init_depends_on_key(tiny):
    model, params, _ = tiny
    other, _ = model.init(random.key(1))
    assert not torch.equal(params["wte"]["weight"], other["wte"]["weight"])
    assert_trees_close(model.init(random.key(0))[0], params, rtol=0, atol=0)


# -- the forward ------------------------------------------------------------------------------

def _reference_logits(model: GPT, params, ids: torch.Tensor) -> torch.Tensor:
    """GPT-2's forward written out in plain torch ops (no deepfn blocks)."""
    F = torch.nn.functional
    t, e, h = ids.shape[1], model.d_model, model.n_heads
    x = params["wte"]["weight"][ids] + params["wpe"]["weight"][:t]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    for i in range(model.n_layers):
        p = params["layers"][str(i)]
        a = F.layer_norm(x, (e,), p["norm1"]["weight"], p["norm1"]["bias"], model.layer_norm_eps)
        q, k, v = F.linear(a, p["self_attn"]["in_proj_weight"], p["self_attn"]["in_proj_bias"]).split(e, -1)
        q, k, v = (z.unflatten(-1, (h, e // h)).transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(-1, -2) / math.sqrt(e // h)).masked_fill(~causal, float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
        x = x + F.linear(y, p["self_attn"]["out_proj"]["weight"], p["self_attn"]["out_proj"]["bias"])
        a = F.layer_norm(x, (e,), p["norm2"]["weight"], p["norm2"]["bias"], model.layer_norm_eps)
        a = F.gelu(F.linear(a, p["linear1"]["weight"], p["linear1"]["bias"]), approximate="tanh")
        x = x + F.linear(a, p["linear2"]["weight"], p["linear2"]["bias"])
    x = F.layer_norm(x, (e,), params["ln_f"]["weight"], params["ln_f"]["bias"], model.layer_norm_eps)
    return x @ params["wte"]["weight"].T


def test_apply_equals_plain_torch_reference(tiny):
    model, params, state = tiny
    ids = _ids(4, 3, 12)
    logits, out_state = model.apply(params, state, ids)
    assert logits.shape == (3, 12, 23) and logits.dtype == torch.float32 and out_state is state
    torch.testing.assert_close(logits, _reference_logits(model, params, ids), rtol=1e-5, atol=1e-5)


def test_float64_params_give_float64_logits(tiny):
    model, params, state = tiny
    logits, _ = model.apply(tree.cast(params, torch.float64), state, _ids(5, 2, 5))
    assert logits.dtype == torch.float64


def test_causal(tiny):
    model, params, state = tiny
    check_causal(lambda ids: model.apply(params, state, ids)[0], _ids(6, 2, 7))


def test_dropout_needs_key_and_changes_output():
    model = GPT(**TINY, dropout=0.2)
    params, state = model.init(random.key(0))
    ids = _ids(7, 2, 6)
    a, _ = model.apply(params, state, ids, key=random.key(1), train=True)
    b, _ = model.apply(params, state, ids, key=random.key(1), train=True)
    c, _ = model.apply(params, state, ids, key=random.key(2), train=True)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match=r"GPT\(.*\)\.apply: train=True needs a random key"):
        model.apply(params, state, ids, train=True)


def test_dropout_keys_come_from_one_split():
    """``apply`` derives every dropout key from one ``random.split(key, 1 + 4 n)``: the
    embedding's row, then each layer's ``n_keys`` rows (``apply_keyed``)."""
    model = GPT(**TINY, dropout=0.3)
    params, state = model.init(random.key(0))
    ids, k = _ids(8, 2, 6), random.key(3)
    keys, layer = random.split(k, 1 + 4 * model.n_layers), model.layer
    x = deepfn.nn.dropout(model.embed(params, ids, torch.arange(6)), 0.3, keys[0], True)
    for i in range(model.n_layers):
        x = layer.apply_keyed(params["layers"][str(i)], {}, x, deepfn.nn.causal_mask(6),
                              keys=keys[1 + 4 * i:5 + 4 * i], train=True)[0]
    assert torch.equal(model.apply(params, state, ids, key=k, train=True)[0], model.logits(params, x))


def test_vmap_over_two_param_sets_equals_loop(tiny):
    model, params, state = tiny
    other, _ = model.init(random.key(9))
    stacked = tree.stack([params, other])
    ids = _ids(8, 2, 6)
    batched = torch.func.vmap(lambda p: model.apply(p, {}, ids)[0])(stacked)
    for i, p in enumerate((params, other)):
        torch.testing.assert_close(batched[i], model.apply(p, {}, ids)[0], rtol=1e-5, atol=1e-6)


def _loss(model: GPT, key, train: bool = True):
    def loss(params, ids):
        logits, _ = model.apply(params, {}, ids[:, :-1], key=key, train=train)
        return losses.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    return loss


def test_remat_field_gives_equal_grads_with_dropout():
    cfg = {**TINY, "dropout": 0.1}
    params, _ = GPT(**cfg).init(random.key(0))
    ids = _ids(10, 2, 9)
    g0, v0 = torch.func.grad_and_value(_loss(GPT(**cfg), random.key(3)))(params, ids)
    g1, v1 = torch.func.grad_and_value(_loss(GPT(**cfg, remat=True), random.key(3)))(params, ids)
    torch.testing.assert_close(v1, v0, rtol=0, atol=0)
    assert_trees_close(g1, g0, rtol=1e-6, atol=1e-7)


def test_deepfn_remat_over_apply_equals_plain(tiny):
    model, params, _ = tiny
    ids = _ids(11, 2, 8)

    def logits(p, x):
        return model.apply(p, {}, x)[0]

    def loss(fn):
        return lambda p: fn(p, ids).square().mean()
    torch.testing.assert_close(deepfn.remat(logits)(params, ids), logits(params, ids), rtol=0, atol=0)
    assert_trees_close(torch.func.grad(loss(deepfn.remat(logits)))(params),
                       torch.func.grad(loss(logits))(params), rtol=1e-6, atol=1e-8)


def test_compile_fullgraph_equals_eager():
    check_block(GPT(**{**TINY, "n_layers": 1}), _ids(12, 2, 5), key=random.key(3), checks=["compile"])


# -- the cached decode step -------------------------------------------------------------------

@pytest.mark.parametrize("prompt_len", [1, 4])
def test_cached_decode_equals_full_forward_at_every_position(tiny, prompt_len):
    model, params, state = tiny
    ids = _ids(13, 3, model.max_len)
    full, _ = model.apply(params, state, ids)
    logits, cache = model.prefill(params, ids[:, :prompt_len])
    torch.testing.assert_close(logits, full[:, prompt_len - 1], rtol=1e-5, atol=1e-5)
    for pos in range(prompt_len, model.max_len):
        before = cache.clone()
        logits, new_cache = model.decode_step(params, ids[:, pos], cache, torch.tensor(pos))
        assert torch.equal(cache, before), "decode_step modified its input cache"
        torch.testing.assert_close(logits, full[:, pos], rtol=1e-5, atol=1e-5)
        cache = new_cache


def test_cache_layout_and_untouched_slots(tiny):
    model, params, _ = tiny
    _, cache = model.prefill(params, _ids(14, 2, 3))
    assert cache.shape == (2, 2, 2, 2, 12, 8) and cache.dtype == torch.float32
    assert bool(cache[..., :3, :].abs().sum(-1).gt(0).all()) and not bool(cache[..., 3:, :].any())
    assert torch.equal(model.init_cache(2), torch.zeros(2, 2, 2, 2, 12, 8))


def test_decode_step_int_and_tensor_positions_agree(tiny):
    model, params, _ = tiny
    ids = _ids(15, 2, 4)
    _, cache = model.prefill(params, ids[:, :3])
    a, ca = model.decode_step(params, ids[:, 3], cache, 3)
    b, cb = model.decode_step(params, ids[:, 3], cache, torch.tensor(3))
    assert torch.equal(a, b) and torch.equal(ca, cb)


def test_compiled_decode_step_serves_every_position_without_recompiling(tiny):
    model, params, state = tiny
    ids = _ids(16, 2, model.max_len)
    full, _ = model.apply(params, state, ids)
    step = torch.compile(model.decode_step, fullgraph=True)
    _, cache = model.prefill(params, ids[:, :2])
    logits, cache = step(params, ids[:, 2], cache, torch.tensor(2))
    torch.testing.assert_close(logits, full[:, 2], rtol=1e-5, atol=1e-5)
    with torch.compiler.set_stance("fail_on_recompile"):
        for pos in range(3, model.max_len):
            logits, cache = step(params, ids[:, pos], cache, torch.tensor(pos))
            torch.testing.assert_close(logits, full[:, pos], rtol=1e-5, atol=1e-5)


# -- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(d_model=10, n_heads=4), r"GPT: d_model must be divisible by n_heads; got d_model=10, n_heads=4"),
    (dict(dropout=1.0), r"GPT: dropout must be a float in \[0, 1\); got 1\.0"),
    (dict(layer_norm_eps=0.0), r"GPT: layer_norm_eps must be a float > 0; got 0\.0"),
    (dict(vocab_size=0), r"GPT: vocab_size must be a positive int; got 0"),
    (dict(max_len=2.5), r"GPT: max_len must be a positive int; got 2\.5"),
    (dict(d_ff=0), r"GPT: d_ff must be a positive int; got 0"),
    (dict(tie_embeddings="yes"), r"GPT: tie_embeddings must be one of \[True, False\]; got 'yes'"),
], ids=lambda v: None)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPT(**{**TINY, **kwargs})


@pytest.mark.parametrize("make_ids, exc, match", [
    (lambda: _ids(0, 2, 13), ValueError, r"GPT\(.*\)\.apply: ids must have 1 to 12 positions \(max_len=12\); "
                                         r"got 13 positions, int64 \[2, 13\]"),
    (lambda: torch.zeros(2, 5), TypeError, r"GPT\(.*\)\.apply: ids must be an integer tensor \(int64 ids\); "
                                           r"got float32 \[2, 5\]"),
    (lambda: torch.zeros(2, 5, dtype=torch.bool), TypeError, r"ids must be an integer tensor"),
    (lambda: torch.zeros(5, dtype=torch.int64), ValueError, r"ids must be 2-d \[B, T\] of token ids; got int64 \[5\]"),
    (lambda: torch.tensor([[1, 23]]), ValueError, r"ids must lie in \[0, 23\) \(vocab_size\); got id 23"),
    (lambda: torch.tensor([[-1, 2]]), ValueError, r"ids must lie in \[0, 23\) \(vocab_size\); got id -1"),
    (lambda: torch.zeros(2, 0, dtype=torch.int64), ValueError, r"ids must have 1 to 12 positions"),
], ids=lambda v: None)
def test_bad_ids_raise(tiny, make_ids, exc, match):
    model, params, state = tiny
    with pytest.raises(exc, match=match):
        model.apply(params, state, make_ids())


def test_params_of_another_model_raise(tiny):
    model, _, state = tiny
    other, _ = GPT(**{**TINY, "n_layers": 1}).init(random.key(0))
    with pytest.raises(ValueError, match=r"GPT\(.*\)\.apply: params\['layers'\] .*missing.*'1'"):
        model.apply(other, state, _ids(0, 1, 3))
    untied, _ = GPT(**TINY, tie_embeddings=False).init(random.key(0))
    with pytest.raises(ValueError, match=r"GPT\(.*\)\.apply: params .*lm_head"):
        model.apply(untied, state, _ids(0, 1, 3))


def test_bad_decode_inputs_raise(tiny):
    model, params, _ = tiny
    _, cache = model.prefill(params, _ids(0, 2, 3))
    token = _ids(1, 2, 1)[:, 0]
    with pytest.raises(ValueError, match=r"decode_step: pos must lie in \[0, 12\) \(max_len\); got 12"):
        model.decode_step(params, token, cache, 12)
    with pytest.raises(TypeError, match=r"decode_step: pos must be an int or a 0-d integer tensor; got float32"):
        model.decode_step(params, token, cache, torch.tensor(3.0))
    with pytest.raises(ValueError, match=r"decode_step: token must be 1-d \[B\] of token ids; got int64 \[2, 1\]"):
        model.decode_step(params, token[:, None], cache, 3)
    with pytest.raises(ValueError, match=r"decode_step: cache must be float32 \[2, 2, 3, 2, 12, 8\].*got float32 "
                                         r"\[2, 2, 2, 2, 12, 8\]"):
        model.decode_step(params, _ids(1, 3, 1)[:, 0], cache, 3)
    with pytest.raises(ValueError, match=r"decode_step: token must lie in \[0, 23\)"):
        model.decode_step(params, torch.tensor([1, 99]), cache, 3)
    with pytest.raises(ValueError, match=r"prefill: cache must be float32"):
        model.prefill(params, _ids(0, 2, 3), cache.double())

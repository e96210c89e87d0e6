"""models.GPT <-> transformers.GPT2LMHeadModel through interop.from_torch / to_torch: logits,
gradients, round trips, greedy generation against ``GPT2LMHeadModel.generate`` and
configuration mismatches, on small random configurations."""

from __future__ import annotations

import pytest
import torch

from deepfn import interop, losses, random, tree
from deepfn.models import GPT, generate
from tests.utils import assert_trees_close

transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4)


def _hf(seed: int = 0, **overrides) -> torch.nn.Module:
    cfg = transformers.GPT2Config(**(SMALL | overrides), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():   # GPT-2's init has zero biases and unit LayerNorms: make every leaf count
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _gpt(**overrides) -> GPT:
    return GPT(**(dict(vocab_size=50, max_len=16, d_model=32, n_layers=2, n_heads=4) | overrides))


def _ids(seed: int, b: int, t: int) -> torch.Tensor:
    return random.randint(random.key(seed), (b, t), 0, 50)


@pytest.mark.parametrize("tied", [True, False])
def test_logits_match_transformers(tied):
    hf = _hf(tie_word_embeddings=tied)
    model = _gpt(tie_embeddings=tied)
    params, state = interop.from_torch(model, hf)
    ids = _ids(1, 3, 16)
    with torch.no_grad():
        want = hf(ids).logits
    got, _ = model.apply(params, state, ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_gradients_match_transformers():
    hf = _hf(1)
    model = _gpt()
    params, state = interop.from_torch(model, hf)
    ids = _ids(2, 2, 10)

    def loss(p):
        logits, _ = model.apply(p, state, ids[:, :-1])
        return losses.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    grads = torch.func.grad(loss)(params)
    hf_loss = hf(ids, labels=ids).loss   # transformers shifts the labels itself
    hf_loss.backward()
    torch.testing.assert_close(loss(params), hf_loss.detach(), rtol=1e-5, atol=1e-6)
    hf_grads = {n: p.grad for n, p in hf.named_parameters()}
    torch.testing.assert_close(grads["wte"]["weight"], hf_grads["transformer.wte.weight"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads["layers"]["1"]["self_attn"]["in_proj_weight"],
                               hf_grads["transformer.h.1.attn.c_attn.weight"].T, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads["layers"]["0"]["linear2"]["weight"],
                               hf_grads["transformer.h.0.mlp.c_proj.weight"].T, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("tied", [True, False])
def test_round_trip_gives_identical_state_dict(tied):
    hf = _hf(2, tie_word_embeddings=tied)
    model = _gpt(tie_embeddings=tied)
    params, state = interop.from_torch(model, hf)
    target = _hf(3, tie_word_embeddings=tied)
    interop.to_torch(model, params, state, target)
    want, got = hf.state_dict(), target.state_dict()
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert_trees_close(interop.from_torch(model, target)[0], params, rtol=0, atol=0)


def test_from_torch_copies_and_keeps_dtype():
    hf = _hf(4).double()
    params, _ = interop.from_torch(_gpt(), hf)
    assert {x.dtype for x in tree.leaves(params)} == {torch.float64}
    before = hf.transformer.wte.weight.detach().clone()
    params["wte"]["weight"].add_(1.0)     # a copy: the module does not change
    assert torch.equal(hf.transformer.wte.weight, before)


def test_greedy_generate_equals_transformers_generate():
    hf = _hf(5)
    model = _gpt()
    params, _ = interop.from_torch(model, hf)
    prompt = _ids(6, 3, 4)
    ours = generate(model, params, prompt, random.key(0), max_new_tokens=10, temperature=0, compile=False)
    with torch.no_grad():
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                             max_new_tokens=10, pad_token_id=0, eos_token_id=None)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("overrides, ours, match", [
    (dict(n_layer=3), {}, r"n_layers=2 but the model's config has n_layer=3"),
    (dict(n_embd=16), {}, r"d_model=32 but the model's config has n_embd=16"),
    (dict(vocab_size=60), {}, r"vocab_size=50 but the model's config has vocab_size=60"),
    (dict(n_positions=32), {}, r"max_len=16 but the model's config has n_positions=32"),
    (dict(n_head=2), {}, r"n_heads=4 but the model's config has n_head=2"),
    (dict(n_inner=64), {}, r"d_ff=128 but the model's config has n_inner=64"),
    (dict(tie_word_embeddings=False), {}, r"tie_embeddings=True but the model's config has tie_word_embeddings=False"),
    ({}, dict(tie_embeddings=False), r"tie_embeddings=False but the model's config has tie_word_embeddings=True"),
    ({}, dict(layer_norm_eps=1e-6), r"layer_norm_eps=1e-06 but the model's config has layer_norm_epsilon=1e-05"),
    (dict(activation_function="relu"), {}, r"activation_function='relu' \(want 'gelu_new'\)"),
    (dict(scale_attn_by_inverse_layer_idx=True), {}, r"scale_attn_by_inverse_layer_idx=True"),
], ids=lambda v: None)
def test_mismatched_config_raises_naming_the_field(overrides, ours, match):
    hf = _hf(**overrides)
    model = _gpt(**ours)
    with pytest.raises(ValueError, match=match):
        interop.from_torch(model, hf)
    params, state = model.init(random.key(0))
    with pytest.raises(ValueError, match=match):
        interop.to_torch(model, params, state, hf)


def test_to_torch_rejects_params_of_another_tree():
    model = _gpt()
    params, state = model.init(random.key(0))
    del params["ln_f"]
    with pytest.raises(ValueError, match=r"interop.to_torch\(GPT\(.*\)\): params names do not match.*missing "
                                         r"\['ln_f.bias', 'ln_f.weight'\]"):
        interop.to_torch(model, params, state, _hf())

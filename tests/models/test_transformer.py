"""deepfn.models.Transformer: oracle vs a torch.nn stack, masks, causality, transforms, training."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepfn import interop, random, tree
from deepfn.models.transformer import Transformer
from deepfn.nn import causal_mask, padding_mask
from deepfn.nn.positional import sinusoidal_table
from tests.utils import TOL, assert_trees_close

TINY = dict(vocab_size=20, d_model=16, n_heads=2, n_layers=2, d_ff=32, dropout=0.0, max_seq_len=12)


class TorchTwin(torch.nn.Module):
    """The same model assembled from torch.nn pieces; state_dict names equal deepfn's flat names."""

    def __init__(self, m: Transformer):
        super().__init__()
        self.m = m
        nn = torch.nn
        if m.share_embeddings:
            self.embedding = nn.Embedding(m.vocab_size, m.d_model)
        else:
            self.src_embedding = nn.Embedding(m.vocab_size, m.d_model)
            self.tgt_embedding = nn.Embedding(m.vocab_size, m.d_model)
        layer = dict(d_model=m.d_model, nhead=m.n_heads, dim_feedforward=m.d_ff, dropout=m.dropout,
                     activation=m.activation, batch_first=True, norm_first=m.norm_first)
        norm = (lambda: nn.LayerNorm(m.d_model)) if m.norm_first else (lambda: None)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer), m.n_layers, norm=norm(),
                                             enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer), m.n_layers, norm=norm())
        if not m.tie_output:
            self.output_layer = nn.Linear(m.d_model, m.vocab_size)

    def embed(self, tokens, table):
        x = table(tokens) * math.sqrt(self.m.d_model)
        return x + sinusoidal_table(tokens.shape[1], self.m.d_model, dtype=x.dtype)

    def forward(self, src, tgt):
        m = self.m
        src_table = self.embedding if m.share_embeddings else self.src_embedding
        tgt_table = self.embedding if m.share_embeddings else self.tgt_embedding
        src_pad, tgt_pad = src == m.pad_token_id, tgt == m.pad_token_id
        memory = self.encoder(self.embed(src, src_table), src_key_padding_mask=src_pad)
        t = tgt.shape[1]
        future = torch.ones(t, t, dtype=torch.bool).triu(1)          # torch: True = masked
        y = self.decoder(self.embed(tgt, tgt_table), memory, tgt_mask=future, tgt_key_padding_mask=tgt_pad,
                         memory_key_padding_mask=src_pad)
        if m.tie_output:
            return torch.nn.functional.linear(y, tgt_table.weight)
        return self.output_layer(y)


def tokens(seed: int, b: int, t: int, vocab: int = 20, pad_tail: int = 0, first: int | None = None):
    """Random non-pad ids (pad = 0) with ``pad_tail`` trailing pads on odd rows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(3, vocab, (b, t), generator=g)
    if first is not None:
        x[:, 0] = first
    if pad_tail:
        x[1::2, t - pad_tail:] = 0
    return x


def twin_pair(dtype, seed=0, **overrides):
    model = Transformer(**{**TINY, **overrides})
    torch.manual_seed(seed)
    twin = TorchTwin(model).to(dtype).eval()
    params, state = interop.from_torch(model, twin)
    return model, twin, params, state


CONFIGS = [dict(), dict(norm_first=True), dict(share_embeddings=False), dict(tie_output=True, activation="gelu"),
           dict(norm_first=True, share_embeddings=False, tie_output=True)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_matches_torch_twin(cfg, dtype):
    model, twin, params, state = twin_pair(dtype, **cfg)
    src, tgt = tokens(1, 4, 7, pad_tail=3), tokens(2, 4, 5, pad_tail=2, first=1)
    logits, new_state = model.apply(params, state, src, tgt)
    with torch.no_grad():
        expected = twin(src, tgt)
    assert logits.shape == (4, 5, 20) and logits.dtype == dtype and new_state is state
    torch.testing.assert_close(logits, expected, **TOL[dtype])


def test_gradients_match_torch_twin():
    model, twin, params, _ = twin_pair(torch.float64, share_embeddings=True, tie_output=True)
    src, tgt = tokens(3, 3, 6, pad_tail=2), tokens(4, 3, 4, first=1)
    w = torch.randn(3, 4, 20, dtype=torch.float64)
    grads = torch.func.grad(lambda p: (model.apply(p, {}, src, tgt)[0] * w).sum())(params)
    (twin(src, tgt) * w).sum().backward()
    expected = tree.unflatten({n: p.grad for n, p in twin.named_parameters()})
    assert_trees_close(grads, expected, rtol=1e-9, atol=1e-10)


def test_params_tree_names_and_tied_leaf(getkey):
    model = Transformer(**TINY)
    k = getkey()
    params, state = model.init(k)
    flat = tree.flatten(params)
    assert state == {} and tree.all_equal(params, model.init(k)[0])
    assert set(flat) == set(TorchTwin(model).state_dict())
    assert "embedding.weight" in flat and "src_embedding.weight" not in flat
    tied = Transformer(**TINY, tie_output=True)
    assert "output_layer.weight" not in tree.flatten(tied.init(getkey())[0])
    # Matrices are xavier-uniform (the seed's init_weights).
    bound = math.sqrt(6 / (20 + 16))
    assert flat["embedding.weight"].abs().max() <= bound


def test_decode_of_encode_equals_apply(getkey):
    model = Transformer(**TINY, norm_first=True)
    params, state = model.init(getkey())
    src, tgt = tokens(5, 2, 6, pad_tail=2), tokens(6, 2, 5, first=1)
    memory, _ = model.encode(params, state, src)
    assert memory.shape == (2, 6, 16)
    torch.testing.assert_close(model.decode(params, state, tgt, memory, src)[0],
                               model.apply(params, state, src, tgt)[0], rtol=0, atol=0)


@settings(max_examples=8)
@given(b=st.integers(1, 3), s=st.integers(1, 12), t=st.integers(1, 12), norm_first=st.booleans(),
       share=st.booleans(), seed=st.integers(0, 2**16))
def test_shapes_over_sizes(b, s, t, norm_first, share, seed):
    model = Transformer(**TINY, norm_first=norm_first, share_embeddings=share)
    params, state = model.init(random.key(seed))
    logits, _ = model.apply(params, state, tokens(seed, b, s), tokens(seed + 1, b, t))
    assert logits.shape == (b, t, 20) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@settings(max_examples=8)
@given(extra=st.integers(1, 4), seed=st.integers(0, 2**16), norm_first=st.booleans())
def test_source_padding_does_not_change_logits(extra, seed, norm_first):
    model = Transformer(**TINY, norm_first=norm_first)
    params, state = model.init(random.key(seed))
    src, tgt = tokens(seed, 2, 5, pad_tail=2), tokens(seed + 1, 2, 4, first=1)
    longer = torch.cat([src, src.new_zeros(2, extra)], dim=1)
    base = model.apply(params, state, src, tgt)[0]
    torch.testing.assert_close(model.apply(params, state, longer, tgt)[0], base, rtol=1e-5, atol=1e-5)
    # Whatever the pad token embeds to, valid encoder positions and logits are unchanged.
    flat = tree.flatten(params)
    flat["embedding.weight"] = flat["embedding.weight"].index_fill(0, torch.tensor([0]), 3.0)
    changed = tree.unflatten(flat)
    valid = (src != 0)[..., None]
    mem0, mem1 = model.encode(params, state, src)[0], model.encode(changed, state, src)[0]
    torch.testing.assert_close(mem1 * valid, mem0 * valid, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.apply(changed, state, src, tgt)[0], base, rtol=1e-5, atol=1e-5)


@settings(max_examples=8)
@given(cut=st.integers(0, 5), seed=st.integers(0, 2**16), norm_first=st.booleans())
def test_logits_do_not_see_future_targets(cut, seed, norm_first):
    model = Transformer(**TINY, norm_first=norm_first)
    params, state = model.init(random.key(seed))
    src, tgt = tokens(seed, 2, 5), tokens(seed + 1, 2, 7, first=1)
    other = torch.cat([tgt[:, :cut + 1], tokens(seed + 2, 2, 6 - cut)], dim=1)
    a, b = model.apply(params, state, src, tgt)[0], model.apply(params, state, src, other)[0]
    torch.testing.assert_close(a[:, :cut + 1], b[:, :cut + 1], rtol=1e-5, atol=1e-5)


def test_vmap_over_two_parameter_sets():
    model = Transformer(**TINY, norm_first=True)
    p1, p2 = model.init(random.key(1))[0], model.init(random.key(2))[0]
    src, tgt = tokens(7, 2, 5, pad_tail=1), tokens(8, 2, 4, first=1)
    out = torch.func.vmap(lambda p: model.apply(p, {}, src, tgt)[0])(tree.stack([p1, p2]))
    for i, p in enumerate((p1, p2)):
        torch.testing.assert_close(out[i], model.apply(p, {}, src, tgt)[0], rtol=1e-5, atol=1e-5)


def test_compile_fullgraph_equals_eager():
    model = Transformer(**{**TINY, "n_layers": 1})
    params, _ = model.init(random.key(3))
    src, tgt = tokens(9, 2, 5, pad_tail=2), tokens(10, 2, 4, first=1)
    compiled = torch.compile(lambda p, s, t: model.apply(p, {}, s, t)[0], fullgraph=True)
    torch.testing.assert_close(compiled(params, src, tgt), model.apply(params, {}, src, tgt)[0],
                               rtol=1e-5, atol=1e-5)


def test_dropout_needs_key_and_is_keyed(getkey):
    model = Transformer(**{**TINY, "dropout": 0.3})
    params, state = model.init(getkey())
    src, tgt = tokens(11, 2, 5), tokens(12, 2, 4, first=1)
    with pytest.raises(ValueError, match=r"Transformer\(.*\)\.apply: train=True needs a random key"):
        model.apply(params, state, src, tgt, train=True)
    k = getkey()
    a = model.apply(params, state, src, tgt, key=k, train=True)[0]
    assert torch.equal(a, model.apply(params, state, src, tgt, key=k, train=True)[0])
    assert not torch.allclose(a, model.apply(params, state, src, tgt)[0])


def _by_layers(model, params, src, tgt, enc_keys, dec_keys):
    """The training forward assembled from the model's public pieces and the layers' ``apply_keyed``,
    with the dropout keys given: ``enc_keys [1 + 4 n, 2]`` (embedding, then 4 rows per layer),
    ``dec_keys [1 + 6 n, 2]``; ``dec_keys=None`` returns the encoder memory."""
    n, pad = model.n_layers, model.pad_token_id
    enc, dec = model.encoder_layer, model.decoder_layer
    x = model.embed(params, src, key=enc_keys[0], train=True, side="src")
    for i in range(n):
        x = enc.apply_keyed(params["encoder"]["layers"][str(i)], {}, x, padding_mask(src, pad),
                            keys=enc_keys[1 + 4 * i:5 + 4 * i], train=True)[0]
    memory = model.final_norm(params["encoder"], x)
    if dec_keys is None:
        return memory
    y = model.embed(params, tgt, key=dec_keys[0], train=True)
    self_mask = causal_mask(tgt.shape[1]) & padding_mask(tgt, pad)
    for i in range(n):
        y = dec.apply_keyed(params["decoder"]["layers"][str(i)], {}, y, memory, self_mask, padding_mask(src, pad),
                            keys=dec_keys[1 + 6 * i:7 + 6 * i], train=True)[0]
    return model.logits(params, model.final_norm(params["decoder"], y))


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31), norm_first=st.booleans())
def test_dropout_keys_come_from_one_split(seed, norm_first):
    """``apply`` derives every dropout key of a call from one ``random.split(key, 2 + 10 n)``
    (encoder rows, then decoder rows); ``encode`` from ``split(key, 1 + 4 n)``."""
    model = Transformer(**{**TINY, "dropout": 0.3, "norm_first": norm_first})
    params, state = model.init(random.key(seed))
    src, tgt, k = tokens(seed, 2, 5, pad_tail=2), tokens(seed + 1, 2, 4, first=1), random.key(seed + 1)
    n = model.n_layers
    keys = random.split(k, 2 + 10 * n)
    want = _by_layers(model, params, src, tgt, keys[:1 + 4 * n], keys[1 + 4 * n:])
    assert torch.equal(model.apply(params, state, src, tgt, key=k, train=True)[0], want)
    memory = model.encode(params, state, src, key=k, train=True)[0]
    assert torch.equal(memory, _by_layers(model, params, src, tgt, random.split(k, 1 + 4 * n), None))
    decoded = model.decode(params, state, tgt, memory, src, key=k, train=True)[0]
    assert decoded.shape == want.shape and not torch.equal(decoded, want)


def test_dropout_same_key_eager_compiled_vmapped():
    """Same key, same output: eagerly, traced whole (AOTAutograd, no Inductor: quick), and per
    lane under ``vmap`` over a batch of keys (each lane its own masks)."""
    model = Transformer(**{**TINY, "dropout": 0.3, "n_layers": 1})
    params, _ = model.init(random.key(5))
    src, tgt = tokens(13, 2, 5, pad_tail=2), tokens(14, 2, 4, first=1)
    fn = lambda p, k: model.apply(p, {}, src, tgt, key=k, train=True)[0]  # noqa: E731
    keys = random.split(random.key(6), 3)
    eager = [fn(params, k) for k in keys]
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    for k, e in zip(keys, eager, strict=True):
        assert torch.equal(compiled(params, k), e)
    batched = torch.func.vmap(fn, in_dims=(None, 0))(params, keys)
    for i, e in enumerate(eager):
        torch.testing.assert_close(batched[i], e, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(eager[0], eager[1])


def test_training_lowers_loss_on_copy_task():
    model = Transformer(**{**TINY, "n_layers": 1})
    params, _ = model.init(random.key(4))
    src = torch.randint(3, 20, (16, 6), generator=torch.Generator().manual_seed(0))
    tgt = torch.cat([torch.ones(16, 1, dtype=torch.int64), src], dim=1)   # BOS + copy

    def loss_fn(p):
        logits = model.apply(p, {}, src, tgt[:, :-1])[0]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 20), tgt[:, 1:].reshape(-1))

    grad_and_loss = torch.func.grad_and_value(loss_fn)
    m, v = tree.zeros_like(params), tree.zeros_like(params)
    losses = []
    for step in range(1, 21):          # plain Adam, lr 1e-2
        g, loss = grad_and_loss(params)
        losses.append(loss.item())
        m = tree.map(lambda a, b: 0.9 * a + 0.1 * b, m, g)
        v = tree.map(lambda a, b: 0.999 * a + 0.001 * b * b, v, g)
        bc1, bc2 = 1 - 0.9**step, 1 - 0.999**step
        params = tree.map(lambda p, a, b, bc1=bc1, bc2=bc2: p - 1e-2 * (a / bc1) / ((b / bc2).sqrt() + 1e-8),
                          params, m, v)
    assert losses[-1] < 0.5 * losses[0], losses


# -- bad input: one test per rejected input ----------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    model = Transformer(**TINY)
    return model, model.init(random.key(0))[0]


def test_rejects_float_tokens(tiny):
    model, params = tiny
    with pytest.raises(TypeError, match=r"Transformer\(.*\)\.apply: src must be an integer tensor"):
        model.apply(params, {}, torch.zeros(2, 3), tokens(0, 2, 3))


def test_rejects_wrong_rank(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match=r"\.apply: tgt must be 2-d \[B, T\] of token ids; got int64 \[3\]"):
        model.apply(params, {}, tokens(0, 2, 3), torch.ones(3, dtype=torch.int64))


def test_rejects_too_long_sequence(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match=r"src must have 1 to 12 positions \(max_seq_len=12\); got 13 positions"):
        model.apply(params, {}, tokens(0, 2, 13), tokens(1, 2, 3))


def test_rejects_id_outside_vocabulary(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match=r"tgt must lie in \[0, 20\) \(vocab_size\); got id 20"):
        model.apply(params, {}, tokens(0, 2, 3), torch.tensor([[1, 20, 3]]).expand(2, 3))


def test_rejects_negative_id(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match=r"\.encode: src must lie in \[0, 20\) \(vocab_size\); got id -1"):
        model.encode(params, {}, torch.tensor([[4, -1]]))


def test_rejects_batch_mismatch(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match=r"\.apply: batch sizes must agree; got \{'src': 2, 'tgt': 3\}"):
        model.apply(params, {}, tokens(0, 2, 3), tokens(1, 3, 3))


def test_rejects_memory_of_wrong_shape(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match=r"\.decode: memory must be \[2, 3, 16\]"):
        model.decode(params, {}, tokens(0, 2, 3), torch.zeros(2, 4, 16), tokens(1, 2, 3))


@pytest.mark.parametrize("bad, match", [
    (dict(d_model=15), "d_model=15 must be divisible by n_heads=2"),
    (dict(pad_token_id=20), r"pad_token_id must be an int in \[0, 20\)"),
    (dict(dropout=1.0), r"dropout must be a float in \[0, 1\)"),
    (dict(activation="swishy"), "unknown activation 'swishy'"),
    (dict(n_layers=0), "n_layers must be a positive int"),
])
def test_rejects_bad_config(bad, match):
    with pytest.raises(ValueError, match=match):
        Transformer(**{**TINY, **bad})

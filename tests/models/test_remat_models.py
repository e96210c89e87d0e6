"""``remat=True`` in Transformer and AdvancedCNN: the same values, gradients and batch-norm
state as without it (grad, vmap(grad), a compiled train step), fewer bytes saved for the
backward pass (eagerly and in a split-compiled step), and evaluation / generation untouched."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from deepfn import losses, optim, random, tree
from deepfn.models import AdvancedCNN, Transformer
from deepfn.train import TrainState, make_train_step
from tests.utils import assert_trees_close

TINY_T = dict(vocab_size=13, d_model=8, n_heads=2, n_layers=2, d_ff=16, dropout=0.2, max_seq_len=16)
TINY_C = dict(input_channels=3, num_classes=5, base_channels=4, num_blocks=(1, 2, 1, 1), stem="cifar",
              use_attention=True, dropout_rate=0.3)


def _tokens():
    src = torch.tensor([[5, 3, 7, 2, 0], [4, 9, 1, 0, 0]])
    tgt = torch.tensor([[1, 6, 8, 2], [1, 12, 0, 0]])
    return src, tgt, torch.tensor([[6, 8, 2, 0], [12, 2, 0, 0]])


def _transformer_loss(model):
    def loss(params, key, src, tgt, labels):
        logits, _ = model.apply(params, {}, src, tgt, key=key, train=True)
        return losses.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=0)
    return loss


def _images(n=4):
    return random.normal(random.key(7), (n, 3, 8, 8)), torch.tensor([0, 3, 1, 4, 2, 2, 1, 0][:n])


def _cnn_loss(model):
    def loss(params, state, key, x, labels):
        logits, new_state = model.apply(params, state, x, key=key, train=True)
        return losses.cross_entropy(logits, labels), new_state
    return loss


def test_transformer_grads_equal_with_dropout():
    plain, rem = Transformer(**TINY_T), Transformer(**TINY_T, remat=True)
    params, _ = plain.init(random.key(0))
    args = (random.key(1), *_tokens())
    g0, v0 = torch.func.grad_and_value(_transformer_loss(plain))(params, *args)
    g1, v1 = torch.func.grad_and_value(_transformer_loss(rem))(params, *args)
    torch.testing.assert_close(v1, v0, rtol=0, atol=0)
    assert_trees_close(g1, g0, rtol=1e-6, atol=1e-7)
    # Dropout is really on: another key changes the loss (so remat replays the same masks).
    assert not torch.equal(_transformer_loss(rem)(params, random.key(2), *_tokens()), v1)


def test_transformer_vmap_grad_over_keys_equals_plain():
    cfg = {**TINY_T, "n_layers": 1}
    plain, rem = Transformer(**cfg), Transformer(**cfg, remat=True)
    params, _ = plain.init(random.key(0))
    keys = random.split(random.key(3), 3)
    batched = lambda m: torch.func.vmap(torch.func.grad(_transformer_loss(m)),  # noqa: E731
                                        in_dims=(None, 0, None, None, None))
    assert_trees_close(batched(rem)(params, keys, *_tokens()), batched(plain)(params, keys, *_tokens()),
                       rtol=1e-6, atol=1e-7)


def test_transformer_compiled_grad_equals_eager_plain():
    # Without dropout: the Threefry keys would multiply the (slow, CPU) compile time.
    cfg = {**TINY_T, "n_layers": 1, "dropout": 0.0}
    params, _ = Transformer(**cfg).init(random.key(0))
    args = (random.key(4), *_tokens())
    compiled = torch.compile(torch.func.grad(_transformer_loss(Transformer(**cfg, remat=True))), fullgraph=True)
    expected = torch.func.grad(_transformer_loss(Transformer(**cfg)))(params, *args)
    assert_trees_close(compiled(params, *args), expected, rtol=1e-4, atol=1e-6)


def test_cnn_grads_and_batch_norm_state_equal():
    plain, rem = AdvancedCNN(**TINY_C), AdvancedCNN(**TINY_C, remat=True)
    params, state = plain.init(random.key(0))
    x, labels = _images()
    g0, (v0, s0) = torch.func.grad_and_value(_cnn_loss(plain), has_aux=True)(params, state, random.key(5), x, labels)
    g1, (v1, s1) = torch.func.grad_and_value(_cnn_loss(rem), has_aux=True)(params, state, random.key(5), x, labels)
    torch.testing.assert_close(v1, v0, rtol=0, atol=0)
    assert_trees_close(s1, s0, rtol=0, atol=0)           # running stats and num_batches_tracked
    assert s1["layer2"]["1"]["bn1"]["num_batches_tracked"].item() == 1
    assert_trees_close(g1, g0, rtol=1e-5, atol=1e-7)


def test_cnn_vmap_grad_over_stacked_params_equals_plain():
    plain, rem = AdvancedCNN(**TINY_C), AdvancedCNN(**TINY_C, remat=True)
    (p0, state), (p1, _) = plain.init(random.key(0)), plain.init(random.key(1))
    stacked = tree.stack([p0, p1])
    x, labels = _images()
    batched = lambda m: torch.func.vmap(torch.func.grad(_cnn_loss(m), has_aux=True),  # noqa: E731
                                        in_dims=(0, None, None, None, None))
    g1, s1 = batched(rem)(stacked, state, random.key(5), x, labels)
    g0, s0 = batched(plain)(stacked, state, random.key(5), x, labels)
    assert_trees_close(g1, g0, rtol=1e-5, atol=1e-7)
    assert_trees_close(s1, s0, rtol=1e-6, atol=1e-7)


def _saved_bytes(loss):
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        value = loss()
    value.backward()
    return saved[0]


def _leaves_requiring_grad(params):
    return tree.map(lambda t: t.detach().clone().requires_grad_(), params)


def test_transformer_saves_fewer_bytes_for_backward():
    cfg = {**TINY_T, "n_layers": 4, "d_model": 16, "d_ff": 64}
    plain, rem = Transformer(**cfg), Transformer(**cfg, remat=True)
    params, _ = plain.init(random.key(0))
    src, tgt = torch.randint(1, 13, (8, 12)), torch.randint(1, 13, (8, 10))
    labels = torch.randint(1, 13, (8, 10))
    sizes = {}
    for name, model in (("plain", plain), ("remat", rem)):
        p = _leaves_requiring_grad(params)
        sizes[name] = _saved_bytes(lambda: _transformer_loss(model)(p, random.key(1), src, tgt, labels))  # noqa: B023
    assert sizes["remat"] < 0.5 * sizes["plain"], sizes


def test_cnn_saves_fewer_bytes_for_backward():
    plain, rem = AdvancedCNN(**TINY_C), AdvancedCNN(**TINY_C, remat=True)
    params, state = plain.init(random.key(0))
    x, labels = random.normal(random.key(7), (8, 3, 16, 16)), torch.arange(8) % 5
    sizes = {}
    for name, model in (("plain", plain), ("remat", rem)):
        p = _leaves_requiring_grad(params)
        sizes[name] = _saved_bytes(lambda: _cnn_loss(model)(p, state, random.key(1), x, labels)[0])  # noqa: B023
    assert sizes["remat"] < 0.6 * sizes["plain"], sizes


def test_eval_and_generation_unaffected():
    plain, rem = Transformer(**TINY_T), Transformer(**TINY_T, remat=True)
    params, state = plain.init(random.key(0))
    src, tgt, _ = _tokens()
    assert torch.equal(rem.apply(params, state, src, tgt)[0], plain.apply(params, state, src, tgt)[0])
    assert torch.equal(rem.greedy_decode(params, state, src, 6), plain.greedy_decode(params, state, src, 6))
    cnn = AdvancedCNN(**TINY_C, remat=True)
    c_params, c_state = cnn.init(random.key(0))
    y, out_state = cnn.apply(c_params, c_state, _images()[0])
    assert out_state is c_state
    assert torch.equal(y, dataclasses.replace(cnn, remat=False).apply(c_params, c_state, _images()[0])[0])


@pytest.mark.parametrize("model", [Transformer, AdvancedCNN])
def test_rejects_non_bool_remat(model):
    with pytest.raises(ValueError, match=rf"{model.__name__}.*remat"):
        model(remat="yes")


def _split_step_saved_bytes(model, ts, batch):
    step = make_train_step(model, losses.cross_entropy, optim.sgd(lr=0.1), compile="split")
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        new, _ = step(ts, batch, random.key(5))
    return saved[0], new


def test_cnn_split_compiled_step_recomputes_stages():
    # compile="split": AOTAutograd recomputes each remat stage in its backward graph.
    cfg = {**TINY_C, "num_blocks": (1, 1, 1, 1), "use_attention": False, "dropout_rate": 0.0}
    plain, rem = AdvancedCNN(**cfg), AdvancedCNN(**cfg, remat=True)
    # float64: batch norm over 8 images of 4 channels turns float32 rounding of the compiled
    # kernels into visible differences of the updated weights.
    ts = TrainState.create(plain, optim.sgd(lr=0.1), random.key(0))
    ts = ts.replace(params=tree.map(lambda t: t.double(), ts.params),
                    state=tree.map(lambda t: t.double() if t.is_floating_point() else t, ts.state))
    batch = (random.normal(random.key(7), (8, 3, 16, 16), torch.float64), torch.arange(8) % 5)
    remat_bytes, remat_new = _split_step_saved_bytes(rem, ts, batch)
    plain_bytes, _ = _split_step_saved_bytes(plain, ts, batch)
    assert remat_bytes < 0.6 * plain_bytes, (remat_bytes, plain_bytes)
    eager_new, _ = make_train_step(plain, losses.cross_entropy, optim.sgd(lr=0.1), compile=False)(
        ts, batch, random.key(5))
    assert_trees_close(remat_new.params, eager_new.params, rtol=1e-8, atol=1e-9)
    assert_trees_close(remat_new.state, eager_new.state, rtol=1e-8, atol=1e-9)

"""Bad input to a training step: a model's own shape errors surface (compiled or not), and a
non-finite loss never silently turns the parameters into NaN."""

import warnings

import pytest
import torch

from deepfn import losses, optim, random, tree
from deepfn.models import MLP, Transformer
from deepfn.train import TrainState, make_eval_step, make_train_step


def _data(n=8, d=6):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_wrong_feature_size_raises_the_models_error(compile):
    model, opt = MLP(6, (8,), 3), optim.sgd(lr=0.1)
    ts = TrainState.create(model, opt, random.key(0))
    step = make_train_step(model, losses.cross_entropy, opt, compile=compile)
    x, y = _data(d=5)
    with warnings.catch_warnings(record=True) as caught, \
            pytest.raises(ValueError, match=r"MLP\(input_dim=6.*\.apply: x must have size 6 \(input_dim\).*got float32 \[8, 5\]"):
        warnings.simplefilter("always")
        step(ts, (x, y), None)
    # The message names the block without dataclasses' repr guard, which Dynamo cannot trace.
    assert not [w for w in caught if "Dynamo does not know" in str(w.message)]


def test_compiled_step_after_a_good_call_still_names_the_shape():
    model, opt = MLP(6, (8,), 3), optim.sgd(lr=0.1)
    ts = TrainState.create(model, opt, random.key(0))
    step = make_train_step(model, losses.cross_entropy, opt, compile=True)
    ts, _ = step(ts, _data(), None)
    with pytest.raises(ValueError, match=r"MLP\(.*got float32 \[8, 7\]"):
        step(ts, (_data(d=7)[0], _data()[1]), None)


def test_compiled_eval_step_raises_the_models_error():
    model = MLP(6, (8,), 3)
    params, state = model.init(random.key(0))
    evaluate = make_eval_step(model, losses.cross_entropy, compile=True)
    with pytest.raises(ValueError, match=r"MLP\(.*x must have size 6"):
        evaluate(params, state, _data(d=4))


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_token_ids_out_of_range_raise_the_models_error(compile):
    model = Transformer(vocab_size=11, d_model=8, n_heads=2, n_layers=1, d_ff=16, dropout=0.0, max_seq_len=8)
    opt = optim.sgd(lr=0.1)
    ts = TrainState.create(model, opt, random.key(0))
    loss_fn = lambda logits, y: losses.cross_entropy(logits.flatten(0, 1), y.flatten())  # noqa: E731
    step = make_train_step(model, loss_fn, opt, compile=compile)
    src, tgt = torch.tensor([[3, 4, 50]]), torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match=r"Transformer\(.*src must lie in \[0, 11\) \(vocab_size\); got id 50"):
        step(ts, ((src, tgt), tgt), None)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_non_finite_loss_skips_the_update_and_flags_it(batch_norm):
    model, opt = MLP(6, (8,), 3, batch_norm=batch_norm), optim.adam(lr=1e-2)
    ts = TrainState.create(model, opt, random.key(0))
    step = make_train_step(model, losses.cross_entropy, opt, compile=False)
    x, y = _data()
    good, m_good = step(ts, (x, y), None)
    assert not bool(m_good["nonfinite"])
    assert not tree.all_equal(good.params, ts.params)
    bad, m_bad = step(good, (x.clone().index_fill_(0, torch.tensor([2]), float("nan")), y), None)
    assert bool(m_bad["nonfinite"]) and not torch.isfinite(m_bad["loss"])
    assert tree.all_equal(bad.params, good.params)          # unchanged, not NaN
    assert tree.all_equal(bad.opt_state, good.opt_state)
    assert tree.all_equal(bad.state, good.state)            # batch-norm statistics kept too
    assert int(bad.step) == int(good.step) + 1
    # Training goes on from the kept parameters.
    after, m_after = step(bad, (x, y), None)
    assert not bool(m_after["nonfinite"]) and all(torch.isfinite(t).all() for t in tree.leaves(after.params))


def test_infinite_loss_with_finite_gradients_is_skipped():
    model, opt = MLP(6, (8,), 3), optim.sgd(lr=0.1)
    ts = TrainState.create(model, opt, random.key(0))
    # A loss term that is inf but has no gradient path: grads finite, loss not.
    inf_loss = lambda logits, y: losses.cross_entropy(logits, y) + torch.tensor(float("inf"))  # noqa: E731
    new, m = make_train_step(model, inf_loss, opt, compile=False)(ts, _data(), None)
    assert bool(m["nonfinite"]) and torch.isfinite(m["grad_norm"])
    assert tree.all_equal(new.params, ts.params)


def test_compiled_non_finite_skip_equals_eager():
    model, opt = MLP(6, (8,), 3), optim.sgd(lr=0.1, momentum=0.9)
    ts = TrainState.create(model, opt, random.key(0))
    x, y = _data()
    x = x.clone().index_fill_(0, torch.tensor([0]), float("inf"))
    eager, m_e = make_train_step(model, losses.cross_entropy, opt, compile=False)(ts, (x, y), None)
    compiled, m_c = make_train_step(model, losses.cross_entropy, opt, compile=True)(ts, (x, y), None)
    assert bool(m_c["nonfinite"]) and bool(m_e["nonfinite"])
    assert tree.all_equal(compiled.params, ts.params) and tree.all_equal(eager.params, ts.params)


def test_finite_loss_with_non_finite_gradients_is_skipped():
    model, opt = MLP(6, (8,), 3), optim.sgd(lr=0.1)
    ts = TrainState.create(model, opt, random.key(0))
    # sqrt(|z - z|) is 0 (a finite loss) with a NaN gradient: only the gradients give it away.
    nan_grad = lambda logits, y: losses.cross_entropy(logits, y) + (logits - logits.detach()).abs().sqrt().sum()  # noqa: E731
    new, m = make_train_step(model, nan_grad, opt, compile=False)(ts, _data(), None)
    assert torch.isfinite(m["loss"]) and not torch.isfinite(m["grad_norm"])
    assert bool(m["nonfinite"]) and tree.all_equal(new.params, ts.params)


def test_finite_gradients_whose_norm_overflows_are_not_skipped():
    model, opt = MLP(6, (8,), 3), optim.sgd(lr=1e-38)
    ts = TrainState.create(model, opt, random.key(0))
    huge = lambda logits, y: (logits * 2e37).sum()  # noqa: E731
    new, m = make_train_step(model, huge, opt, compile=False)(ts, _data(), None)
    # Every gradient is finite, but the sum of their squares is past float32's range.
    assert not torch.isfinite(m["grad_norm"]) and not bool(m["nonfinite"])
    assert not tree.all_equal(new.params, ts.params)
    assert all(torch.isfinite(t).all() for t in tree.leaves(new.params))

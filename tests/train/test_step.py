"""make_train_step / make_eval_step: oracle vs torch.optim, accumulation, loss scaling, AMP,
clipping, all-reduce, purity, compilation without recompiles."""

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepfn import amp, losses, optim, random, tree
from deepfn.models import MLP
from deepfn.train import TrainState, make_eval_step, make_train_step
from tests.utils import assert_trees_close


def assert_leaves_close(a, b, **tol):
    """Compare any two pytrees (TrainState included) leaf by leaf."""
    assert tree.structure(a) == tree.structure(b)
    for x, y in zip(tree.leaves(a), tree.leaves(b), strict=True):
        torch.testing.assert_close(x, y, **tol)


def _data(seed=0, n=8, d=6, classes=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def _state(model, opt, **kw):
    return TrainState.create(model, opt, random.key(0), **kw)


def test_matches_torch_adamw_loop():
    model, opt = MLP(6, (16, 8), 3), optim.adamw(lr=1e-2, weight_decay=0.1)
    ts = _state(model, opt)
    leaves = {k: v.clone().requires_grad_() for k, v in tree.flatten(ts.params).items()}
    ref = torch.optim.AdamW(leaves.values(), lr=1e-2, weight_decay=0.1)
    step = make_train_step(model, losses.cross_entropy, opt, compile=False)
    for i in range(4):
        x, y = _data(i)
        ts, metrics = step(ts, (x, y), None)
        ref.zero_grad()
        logits, _ = model.apply(tree.unflatten(leaves), {}, x, train=True)
        loss = torch.nn.functional.cross_entropy(logits, y)
        loss.backward()
        ref.step()
        torch.testing.assert_close(metrics["loss"], loss.detach())
    assert_trees_close(ts.params, tree.unflatten({k: v.detach() for k, v in leaves.items()}), rtol=1e-5, atol=1e-6)
    assert int(ts.step) == 4 and ts.step.dtype == torch.int64


@settings(max_examples=8)
@given(k=st.sampled_from([1, 2, 4]), seed=st.integers(0, 100))
def test_accumulation_equals_full_batch(k, seed):
    model, opt = MLP(6, (8,), 3), optim.adamw(lr=1e-2)
    ts = _state(model, opt)
    batch = _data(seed)
    full, m_full = make_train_step(model, losses.cross_entropy, opt, compile=False)(ts, batch, None)
    acc, m_acc = make_train_step(model, losses.cross_entropy, opt, accumulation_steps=k,
                                 compile=False)(ts, batch, None)
    assert_trees_close(acc.params, full.params, rtol=1e-5, atol=1e-6)
    assert_trees_close(acc.opt_state, full.opt_state, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m_acc["loss"], m_full["loss"])
    torch.testing.assert_close(m_acc["grad_norm"], m_full["grad_norm"])


def test_accumulation_uses_fold_in_keys_per_micro_batch():
    model, opt = MLP(6, (8,), 3, dropout_rate=0.5), optim.sgd(lr=0.1)
    ts = _state(model, opt)
    (x, y), key = _data(), random.key(7)
    new, _ = make_train_step(model, losses.cross_entropy, opt, accumulation_steps=2, compile=False)(ts, (x, y), key)

    def loss(p, xs, ys, k):
        return losses.cross_entropy(model.apply(p, {}, xs, key=k, train=True)[0], ys)
    grads = [torch.func.grad(loss)(ts.params, x[4 * i:4 * i + 4], y[4 * i:4 * i + 4], random.fold_in(key, i))
             for i in range(2)]
    expected = tree.map(lambda p, a, b: p - 0.1 * (a + b) / 2, ts.params, *grads)
    assert_trees_close(new.params, expected)


def test_step_is_pure():
    model, opt = MLP(6, (8,), 3, batch_norm=True), optim.adam(lr=1e-2)
    ts = _state(model, opt, loss_scale=amp.DynamicLossScale())
    before = tree.map(lambda t: t.clone(), ts)
    versions = [t._version for t in tree.leaves(ts)]
    x, y = _data()
    make_train_step(model, losses.cross_entropy, opt, compile=False)(ts, (x, y), random.key(1))
    assert tree.all_equal(ts, before)
    assert versions == [t._version for t in tree.leaves(ts)]


def _poison(x, bad):
    return x.clone().index_fill_(0, torch.tensor([0]), float("nan")) if bad else x


def test_loss_scale_skips_non_finite_steps_and_adjusts():
    model, opt = MLP(6, (8,), 3), optim.adam(lr=1e-2)
    ts = _state(model, opt, loss_scale=amp.DynamicLossScale(init_scale=2.0 ** 10, growth_interval=2))
    step = make_train_step(model, losses.cross_entropy, opt, compile=False)
    x, y = _data()
    scales = []
    for bad in [False, True, False, False]:
        new, metrics = step(ts, (_poison(x, bad), y), None)
        assert bool(metrics["grads_finite"]) == (not bad)
        same = tree.all_equal(new.params, ts.params) and tree.all_equal(new.opt_state, ts.opt_state)
        assert same == bad
        scales.append(float(new.loss_scale.loss_scale))
        ts = new
    assert scales == [1024.0, 512.0, 512.0, 1024.0]
    assert int(ts.step) == 4


def test_loss_scaled_step_equals_unscaled_step():
    model, opt = MLP(6, (8,), 3), optim.sgd(lr=0.1, momentum=0.9)
    ts = _state(model, opt)
    batch = _data()
    plain, _ = make_train_step(model, losses.cross_entropy, opt, compile=False)(ts, batch, None)
    scaled, m = make_train_step(model, losses.cross_entropy, opt, loss_scale=amp.DynamicLossScale(),
                                compile=False)(ts, batch, None)
    assert_trees_close(scaled.params, plain.params)
    assert float(m["loss_scale"]) == 2.0 ** 16 and isinstance(scaled.loss_scale, amp.DynamicLossScale)


def test_bf16_policy_keeps_fp32_params_and_close_loss():
    model, opt = MLP(6, (16,), 3, batch_norm=True), optim.sgd(lr=0.1)
    policy = amp.Policy.from_string("params=float32,compute=bfloat16,output=float32")
    ts = _state(model, opt, policy=policy)
    batch = _data()
    mixed, m_mixed = make_train_step(model, losses.cross_entropy, opt, policy=policy, compile=False)(ts, batch, None)
    full, m_full = make_train_step(model, losses.cross_entropy, opt, compile=False)(ts, batch, None)
    assert all(t.dtype == torch.float32 for t in tree.leaves(mixed.params))
    assert [t.dtype for t in tree.leaves(mixed.state)] == [t.dtype for t in tree.leaves(ts.state)]
    assert m_mixed["loss"].dtype == torch.float32
    torch.testing.assert_close(m_mixed["loss"], m_full["loss"], rtol=2e-2, atol=2e-2)
    assert_trees_close(mixed.params, full.params, rtol=0, atol=2e-2)


def test_clip_norm_equals_optim_clip_by_global_norm():
    model = MLP(6, (8,), 3)
    ts = _state(model, optim.sgd(lr=0.5))
    batch = _data()
    ours, m = make_train_step(model, losses.cross_entropy, optim.sgd(lr=0.5), clip_norm=0.05,
                              compile=False)(ts, batch, None)
    chained = optim.chain(optim.clip_by_global_norm(0.05), optim.sgd(lr=0.5))
    ref, _ = make_train_step(model, losses.cross_entropy, chained, compile=False)(
        TrainState(ts.params, ts.state, chained.init(ts.params)), batch, None)
    assert_trees_close(ours.params, ref.params)
    assert float(m["grad_norm"]) > 0.05       # the norm is reported before clipping


def test_all_reduce_called_once_per_update_on_the_gradients():
    model, opt = MLP(6, (8,), 3), optim.sgd(lr=0.1)
    ts = _state(model, opt)
    calls = []

    def zero(grads):
        calls.append(1)
        return tree.map(torch.zeros_like, grads)
    new, _ = make_train_step(model, losses.cross_entropy, opt, accumulation_steps=4, all_reduce=zero,
                             compile=False)(ts, _data(), None)
    assert len(calls) == 1
    assert tree.all_equal(new.params, ts.params)


def test_metrics():
    model, opt = MLP(6, (8,), 3), optim.sgd(lr=0.1)
    step = make_train_step(model, losses.cross_entropy, opt, lr=optim.linear_warmup(0.1, 10), compile=False)
    x, y = _data()
    ts = _state(model, opt)
    _, m = step(ts, (x, y), None)
    assert set(m) == {"loss", "grad_norm", "accuracy", "lr", "nonfinite"}
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in m.values())
    logits, _ = model.apply(ts.params, ts.state, x)
    assert float(m["accuracy"]) == pytest.approx(float((logits.argmax(-1) == y).float().mean()))
    assert float(m["lr"]) == pytest.approx(float(optim.linear_warmup(0.1, 10)(0)))


def _two_steps_against_eager(model, opt, mode, **kw):
    """Two steps of ``make_train_step(compile=mode)`` and of the eager step from the same state;
    the second compiled call must not recompile. Returns both states after each step."""
    kw = dict(accumulation_steps=2, clip_norm=1.0, **kw)
    compiled = make_train_step(model, losses.cross_entropy, opt, compile=mode, **kw)
    eager = make_train_step(model, losses.cross_entropy, opt, compile=False, accumulation_steps=2, clip_norm=1.0)
    x, y = _data(d=4)
    fresh = lambda: _state(model, opt, loss_scale=amp.DynamicLossScale())  # noqa: E731 (donation may use one up)
    c1, mc = compiled(fresh(), (x, y), random.key(1))
    e1, me = eager(fresh(), (x, y), random.key(1))
    assert_leaves_close(c1, e1, rtol=1e-5, atol=1e-6)
    assert_leaves_close(mc, me, rtol=1e-5, atol=1e-6)
    c1_leaves = tree.leaves(c1.params)
    with torch.compiler.set_stance("fail_on_recompile"):
        c2, _ = compiled(c1, (x + 1, y), random.key(2))
    e2, _ = eager(e1, (x + 1, y), random.key(2))
    assert_trees_close(c2.params, e2.params, rtol=1e-5, atol=1e-6)
    return c1_leaves, c2


def test_compiled_step_equals_eager_and_does_not_recompile():
    _two_steps_against_eager(MLP(4, (8,), 3, dropout_rate=0.25), optim.adamw(lr=1e-2), True)


def test_split_compiled_step_equals_eager_donates_and_does_not_recompile():
    # SGD: Adam's normalisation turns float-rounding differences of near-zero gradients into
    # visible update differences, which says nothing about the step.
    model, opt = MLP(4, (8,), 3, dropout_rate=0.25, batch_norm=True), optim.sgd(lr=0.1, momentum=0.9)
    given, c2 = _two_steps_against_eager(model, opt, "split", donate=True)
    # Donated: the eager update wrote the new values into the tensors it was given.
    assert all(a is b for a, b in zip(tree.leaves(c2.params), given, strict=True))


def test_rejects_bad_compile_mode():
    with pytest.raises(ValueError, match=r"make_train_step: compile must be True/'whole'.*'split'.*got 'fast'"):
        make_train_step(MLP(6, (8,), 3), losses.cross_entropy, optim.sgd(lr=0.1), compile="fast")


def test_eval_step():
    model = MLP(6, (8,), 3, batch_norm=True)
    params, state = model.init(random.key(0))
    x, y = _data()
    m = make_eval_step(model, losses.cross_entropy, compile=False)(params, state, (x, y))
    logits, _ = model.apply(params, state, x)
    torch.testing.assert_close(m["loss"], torch.nn.functional.cross_entropy(logits, y))
    assert float(m["accuracy"]) == pytest.approx(float((logits.argmax(-1) == y).float().mean()))


def test_rejects_indivisible_batch():
    model, opt = MLP(6, (8,), 3), optim.sgd(lr=0.1)
    step = make_train_step(model, losses.cross_entropy, opt, accumulation_steps=3, compile=False)
    with pytest.raises(ValueError, match=r"make_train_step: step: batch size must be divisible by accumulation_steps=3; got 8"):
        step(_state(model, opt), _data(), None)


def test_rejects_non_pair_batch():
    model, opt = MLP(6, (8,), 3), optim.sgd(lr=0.1)
    step = make_train_step(model, losses.cross_entropy, opt, compile=False)
    with pytest.raises(ValueError, match=r"make_train_step: step: batch must be a pair \(inputs, labels\)"):
        step(_state(model, opt), _data()[0], None)


def test_rejects_mismatched_batch_sizes():
    model, opt = MLP(6, (8,), 3), optim.sgd(lr=0.1)
    step = make_train_step(model, losses.cross_entropy, opt, compile=False)
    x, y = _data()
    with pytest.raises(ValueError, match=r"make_train_step: step: every batch tensor needs the same leading"):
        step(_state(model, opt), (x, y[:5]), None)


def test_rejects_non_train_state():
    model, opt = MLP(6, (8,), 3), optim.sgd(lr=0.1)
    step = make_train_step(model, losses.cross_entropy, opt, compile=False)
    with pytest.raises(TypeError, match=r"make_train_step: step needs a TrainState; got dict"):
        step({"params": {}}, _data(), None)


def test_rejects_bad_accumulation_steps():
    with pytest.raises(ValueError, match=r"make_train_step: accumulation_steps must be a positive int; got 0"):
        make_train_step(MLP(6, (8,), 3), losses.cross_entropy, optim.sgd(lr=0.1), accumulation_steps=0)


def test_rejects_bad_clip_norm():
    with pytest.raises(ValueError, match=r"make_train_step: clip_norm must be None or a positive float; got -1"):
        make_train_step(MLP(6, (8,), 3), losses.cross_entropy, optim.sgd(lr=0.1), clip_norm=-1)


def test_rejects_bad_policy():
    with pytest.raises(TypeError, match=r"make_train_step: policy must be None or an amp.Policy; got str"):
        make_train_step(MLP(6, (8,), 3), losses.cross_entropy, optim.sgd(lr=0.1), policy="bf16")


def test_rejects_bad_optimizer():
    with pytest.raises(TypeError, match=r"make_train_step: optimizer must be a GradientTransformation"):
        make_train_step(MLP(6, (8,), 3), losses.cross_entropy, torch.optim.SGD)


def test_train_state_rejects_bad_loss_scale():
    with pytest.raises(TypeError, match=r"TrainState: loss_scale must be None or an amp.DynamicLossScale; got float"):
        TrainState({}, {}, (), 0, 2.0)


def test_accuracy_leaves_out_ignore_index_labels():
    model, opt = MLP(6, (8,), 3), optim.sgd(lr=0.0)
    ts = _state(model, opt)
    x, _ = _data()
    pred = model.apply(ts.params, ts.state, x)[0].argmax(-1)
    even = torch.arange(pred.shape[0]) % 2 == 0
    ignored = torch.where(even, pred, torch.full_like(pred, -100))      # odd rows: padding
    wrong = torch.where(even, pred, (pred + 1) % 3)                     # odd rows: wrong answers
    loss_fn = functools.partial(losses.cross_entropy, ignore_index=-100)
    ev = make_eval_step(model, loss_fn, compile=False, ignore_index=-100)
    assert float(ev(ts.params, ts.state, (x, ignored))["accuracy"]) == 1.0
    plain = make_eval_step(model, losses.cross_entropy, compile=False)
    assert float(plain(ts.params, ts.state, (x, wrong))["accuracy"]) == float(even.float().mean())
    _, m = make_train_step(model, loss_fn, opt, compile=False, ignore_index=-100)(ts, (x, ignored), None)
    assert float(m["accuracy"]) == 1.0

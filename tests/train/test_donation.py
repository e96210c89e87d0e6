"""make_train_step(donate=True): the pure step's numbers, written into the given state's tensors."""

import pytest
import torch

from deepfn import amp, losses, optim, random, tree
from deepfn.models import MLP
from deepfn.train import TrainState, fit, make_eval_step, make_train_step

MODEL = MLP(6, (16, 8), 3, batch_norm=True, dropout_rate=0.1)


def _data(seed, n=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()


def _clone(ts):
    return tree.map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, ts)


def _train(donate, compile, opt, batches, **kw):
    ts = TrainState.create(MODEL, opt, random.key(0), **kw)
    first = ts
    step = make_train_step(MODEL, losses.cross_entropy, opt, clip_norm=1.0, compile=compile, donate=donate)
    assert step.donates is donate
    history = []
    for i, batch in enumerate(batches):
        ts, m = step(ts, batch, random.key(i))
        history.append(_clone((ts, m)))
    return first, ts, history


def _assert_same(a, b):
    """Bit for bit, NaN metrics of skipped steps included."""
    assert tree.structure(a) == tree.structure(b)
    for x, y in zip(tree.leaves(a), tree.leaves(b), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)


def _poison(batch):
    x, y = batch
    return x * torch.nan, y


@pytest.mark.parametrize("opt", [optim.adamw(1e-2, weight_decay=0.1), optim.adam(1e-2, weight_decay=0.1),
                                 optim.sgd(0.1, momentum=0.9)], ids=["adamw", "adam", "sgd"])
def test_eager_donated_steps_equal_pure_steps_and_write_in_place(opt):
    """Bit for bit, except Adam's and AdamW's own donated forms (equal up to rounding)."""
    batches = [_data(0), _data(1), _poison(_data(2)), _data(3)]
    _, _, pure = _train(False, False, opt, batches)
    first, last, donated = _train(True, False, opt, batches)
    if getattr(opt.update, "in_place", None) is None:
        for a, b in zip(donated, pure, strict=True):
            _assert_same(a, b)
    else:
        # Their donated forms are torch.optim's order of the same arithmetic: equal up to rounding
        # from the same state. (Across steps Adam would amplify that rounding: it normalises the
        # near-zero gradient of a bias that batch norm cancels to a step of size lr.)
        pure_step = make_train_step(MODEL, losses.cross_entropy, opt, clip_norm=1.0, compile=False)
        before = TrainState.create(MODEL, opt, random.key(0))
        for i, (batch, (ts_d, m_d)) in enumerate(zip(batches, donated, strict=True)):
            ts_p, m_p = pure_step(before, batch, random.key(i))
            torch.testing.assert_close(tree.leaves(ts_d), tree.leaves(ts_p), rtol=1e-6, atol=1e-7, equal_nan=True)
            _assert_same(m_d, m_p)   # the metrics come before the update
            before = ts_d
    assert bool(donated[2][1]["nonfinite"]) and tree.all_equal(donated[2][0].params, donated[1][0].params)
    # The first state's parameter and moment tensors are the ones the last state holds.
    assert all(a is b for a, b in zip(tree.leaves(last.params), tree.leaves(first.params), strict=True))
    moments = [(a, b) for a, b in zip(tree.leaves(last.opt_state), tree.leaves(first.opt_state), strict=True)
               if a.ndim > 0]
    assert moments and all(a is b for a, b in moments)


@pytest.mark.parametrize("make", [optim.adamw, optim.adam], ids=["adamw", "adam"])
def test_eager_donated_adam_steps_take_its_in_place_form(make):
    opt = make(1e-2, weight_decay=0.1)
    calls = []

    def counted(*args, own=opt.update.in_place):
        calls.append(own(*args))
        return calls[-1]
    opt.update.in_place = counted
    batches = [_data(0), _poison(_data(1)), _data(2)]
    _train(True, False, opt, batches)
    assert len(calls) == 2 and all(c is not None for c in calls)   # not on the skipped step
    calls.clear()
    _train(False, False, opt, batches)
    assert not calls                                                # only when donating


@pytest.mark.parametrize("make", [optim.adamw, optim.adam], ids=["adamw", "adam"])
def test_adam_in_place_form_writes_parameters_that_require_grad(make):
    params = {"w": torch.nn.Parameter(torch.ones(3))}
    opt = make(0.1, weight_decay=0.1)
    expected = optim.apply_updates(params, opt.update({"w": torch.ones(3)}, opt.init(params), params)[0])
    got, _ = opt.update.in_place({"w": torch.ones(3)}, opt.init(params), params)
    assert got["w"] is params["w"]
    torch.testing.assert_close(got["w"].detach(), expected["w"].detach())


def test_compiled_donated_steps_equal_pure_steps_and_write_in_place():
    opt = optim.adamw(1e-2, weight_decay=0.1)
    batches = [_data(0), _poison(_data(1)), _data(2)]
    _, _, pure = _train(False, True, opt, batches)
    first, last, donated = _train(True, True, opt, batches)
    for (ts_d, m_d), (ts_p, m_p) in zip(donated, pure, strict=True):
        torch.testing.assert_close(tree.leaves(ts_d), tree.leaves(ts_p), rtol=1e-6, atol=1e-7, equal_nan=True)
        assert bool(m_d["nonfinite"]) == bool(m_p["nonfinite"])
    assert bool(donated[1][1]["nonfinite"])
    assert all(a is b for a, b in zip(tree.leaves(last.params), tree.leaves(first.params), strict=True))


# The mechanics tests below compare donated and pure steps bit for bit, so they use SGD, whose
# donated form is the same arithmetic (Adam's and AdamW's in-place forms round differently).
def test_donated_loss_scaled_overflow_keeps_params_and_halves_the_scale():
    opt = optim.sgd(0.05, momentum=0.9)
    scale = amp.DynamicLossScale(init_scale=2.0 ** 10, growth_interval=2)
    batches = [_data(0), _poison(_data(1)), _data(2)]
    _, _, pure = _train(False, False, opt, batches, loss_scale=scale)
    _, _, donated = _train(True, False, opt, batches, loss_scale=scale)
    for a, b in zip(donated, pure, strict=True):
        _assert_same(a, b)
    assert [float(h[0].loss_scale.loss_scale) for h in donated] == [1024.0, 512.0, 512.0]


def test_fit_keeps_a_copy_of_the_best_state_when_the_step_donates():
    opt = optim.sgd(0.05, momentum=0.9)
    results = []
    for donate in (False, True):
        ts = TrainState.create(MODEL, opt, random.key(1))
        step = make_train_step(MODEL, losses.cross_entropy, opt, compile=False, donate=donate)
        # An eval loss that is best at epoch 2 of 4: the returned state is epoch 2's.
        losses_by_epoch = iter([3.0, 1.0, 2.0, 2.5])
        best, history = fit(step, ts, _data(0, 40), epochs=4, batch_size=8, key=random.key(7),
                            eval_step=lambda p, s, b, it=losses_by_epoch: {"loss": torch.tensor(next(it))},
                            val_data=_data(1, 8), progress=False)
        assert history.best_epoch == 2
        results.append(best)
    assert tree.all_equal(results[1], results[0])
    ev = make_eval_step(MODEL, losses.cross_entropy, compile=False)
    assert ev(results[1].params, results[1].state, _data(1))["loss"].isfinite()


def test_donation_rejects_leaves_that_share_memory():
    opt = optim.adam(1e-2)
    ts = TrainState.create(MODEL, opt, random.key(0))
    w = ts.params["network"]["0"]["weight"]
    aliased = ts.replace(opt_state=tree.map(lambda x: w if x.shape == w.shape and x.ndim == 2 else x, ts.opt_state))
    step = make_train_step(MODEL, losses.cross_entropy, opt, compile=False, donate=True)
    with pytest.raises(ValueError, match=r"leaves '[a-z_.0-9]+network.0.weight' and '[a-z_.0-9]+network.0.weight' .*overlap in memory"):
        step(aliased, _data(0), random.key(0))
    make_train_step(MODEL, losses.cross_entropy, opt, compile=False)(aliased, _data(0), random.key(0))  # pure: fine


def test_the_returned_state_is_not_walked_again_but_any_other_state_is(monkeypatch):
    from deepfn.train import donate as donate_module
    calls = []
    real = donate_module._donated_leaves
    monkeypatch.setattr(donate_module, "_donated_leaves", lambda *a: (calls.append(1), real(*a))[1])
    opt = optim.adam(1e-2)
    step = make_train_step(MODEL, losses.cross_entropy, opt, compile=False, donate=True)
    ts = TrainState.create(MODEL, opt, random.key(0))
    for i in range(3):
        ts, _ = step(ts, _data(i), random.key(i))
    assert len(calls) == 1   # only the caller's first state
    w = ts.params["network"]["0"]["weight"]
    aliased = ts.replace(opt_state=tree.map(lambda x: w if x.shape == w.shape and x.ndim == 2 else x, ts.opt_state))
    with pytest.raises(ValueError, match=r"overlap in memory"):
        step(aliased, _data(0), random.key(0))
    assert len(calls) == 2


def test_donation_accepts_disjoint_views_of_one_buffer():
    # distributed.broadcast hands back views of one flat buffer: disjoint, so safe to update in place.
    opt = optim.sgd(0.05, momentum=0.9)
    ts = TrainState.create(MODEL, opt, random.key(0))
    leaves = tree.leaves(ts.params)
    flat = torch.cat([x.reshape(-1) for x in leaves])
    views = iter(flat.split([x.numel() for x in leaves]))
    packed = ts.replace(params=tree.map(lambda x: next(views).view(x.shape), ts.params))
    expected, _ = make_train_step(MODEL, losses.cross_entropy, opt, compile=False)(_clone(packed), _data(0), random.key(0))
    got, _ = make_train_step(MODEL, losses.cross_entropy, opt, compile=False, donate=True)(packed, _data(0), random.key(0))
    assert tree.all_equal(got.params, expected.params)

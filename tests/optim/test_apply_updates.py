"""apply_updates: the sum, out of place, or written into donated update leaves."""

from __future__ import annotations

import torch

from deepfn import optim, tree
from tests.utils import assert_trees_close


def _trees():
    g = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)}
    updates = {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)}
    return params, updates


def test_out_of_place_by_default():
    params, updates = _trees()
    before = tree.map(torch.clone, (params, updates))
    new = optim.apply_updates(params, updates)
    assert tree.all_equal((params, updates), before)
    assert all(torch.equal(new[k], before[0][k] + before[1][k]) for k in params)


def test_donated_updates_hold_the_same_sum_and_params_stay():
    params, updates = _trees()
    expected = optim.apply_updates(params, updates)
    p0 = tree.map(torch.clone, params)
    new = optim.apply_updates(params, updates, donate_updates=True)
    assert tree.all_equal(new, expected) and tree.all_equal(params, p0)
    assert new["w"].data_ptr() == updates["w"].data_ptr()       # no new allocation


def test_donation_falls_back_when_dtypes_differ():
    params, updates = _trees()
    half = tree.map(lambda t: t.to(torch.bfloat16), updates)
    new = optim.apply_updates(params, half, donate_updates=True)
    assert new["w"].dtype == torch.float32 and new["w"].data_ptr() != half["w"].data_ptr()


def test_train_step_reuses_fresh_updates_without_touching_its_input():
    from deepfn import losses, random
    from deepfn.models import MLP
    from deepfn.train import TrainState, make_train_step
    model, opt = MLP(6, (8,), 3), optim.adamw(1e-2)
    ts = TrainState.create(model, opt, random.key(0))
    snapshot = tree.map(torch.clone, ts)
    x, y = random.normal(random.key(1), (5, 6)), random.randint(random.key(2), (5,), 0, 3)
    new, _ = make_train_step(model, losses.cross_entropy, opt, compile=False)(ts, (x, y), None)
    assert tree.all_equal(ts, snapshot)
    u, _ = opt.update(make_grads(model, ts, x, y), ts.opt_state, ts.params)
    assert_trees_close(new.params, optim.apply_updates(ts.params, u), rtol=1e-6, atol=1e-7)


def make_grads(model, ts, x, y):
    from deepfn import losses

    def loss(p):
        return losses.cross_entropy(model.apply(p, ts.state, x, train=True)[0], y)
    return torch.func.grad(loss)(ts.params)

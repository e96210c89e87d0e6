"""A skipped step (non-finite loss or gradients) keeps the whole old model state: params,
optimizer state and batch-norm statistics, with or without a loss scale, eager, compiled and
donated; later evaluations stay finite."""

import pytest
import torch

from deepfn import amp, losses, optim, random, tree
from deepfn.models import MLP
from deepfn.train import TrainState, make_eval_step, make_train_step

MODEL = MLP(6, (16,), 3, batch_norm=True)


def _data(seed, n=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, (x[:, 0] > 0).long()


def _one_nan_row(batch):
    x, y = batch
    return x.clone().index_fill_(0, torch.tensor([3]), float("nan")), y


def _clone(ts):
    return tree.map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, ts)


@pytest.mark.parametrize("compile, donate, scaled", [
    (False, False, True), (False, True, True), (True, False, True), (True, True, True), (False, False, False),
], ids=["eager", "eager-donated", "compiled", "compiled-donated", "eager-unscaled"])
def test_a_skipped_step_keeps_params_optimizer_and_batch_norm_state(compile, donate, scaled):
    opt = optim.adam(1e-2)
    scale = amp.DynamicLossScale(init_scale=2.0 ** 10) if scaled else None
    ts = TrainState.create(MODEL, opt, random.key(0), loss_scale=scale)
    step = make_train_step(MODEL, losses.cross_entropy, opt, compile=compile, donate=donate)
    ts, _ = step(ts, _data(0), random.key(0))   # a good step first: the state is not the initial one
    before = _clone(ts)
    ts, metrics = step(ts, _one_nan_row(_data(1)), random.key(1))
    assert bool(metrics["nonfinite"])
    assert tree.all_equal(ts.params, before.params)
    assert tree.all_equal(ts.opt_state, before.opt_state)
    assert tree.all_equal(ts.state, before.state)   # the NaN row's batch statistics did not enter
    assert int(ts.step) == 2
    if scaled:
        assert float(ts.loss_scale.loss_scale) == 2.0 ** 9 and not bool(metrics["grads_finite"])
    ts, metrics = step(ts, _data(2), random.key(2))
    assert not bool(metrics["nonfinite"])
    evaluation = make_eval_step(MODEL, losses.cross_entropy, compile=False)(ts.params, ts.state, _data(3))
    assert torch.isfinite(evaluation["loss"])
    assert all(bool(torch.isfinite(x).all()) for x in tree.leaves(ts.state))

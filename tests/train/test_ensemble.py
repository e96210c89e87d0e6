"""Ensembles: vmapped init and one vmapped step equal each member trained alone."""

import pytest
import torch

from deepfn import amp, losses, optim, random, tree
from deepfn.models import MLP
from deepfn.train import (
    TrainState,
    ensemble_init,
    ensemble_train_state,
    make_ensemble_train_step,
    make_train_step,
)

# SGD, not Adam: with batch norm the bias before it has a ~1e-9 gradient whose sign Adam
# would amplify to +-lr, hiding real differences behind rounding noise.
MODEL, OPT = MLP(4, (8,), 3, dropout_rate=0.2, batch_norm=True), optim.sgd(lr=0.1, momentum=0.9)


def _data(seed=0, lead=()):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*lead, 8, 4, generator=g), torch.randint(0, 3, (*lead, 8), generator=g)


def _member(stacked, i):
    return tree.map(lambda t: t[i], stacked)


def _assert_close(a, b):
    assert tree.structure(a) == tree.structure(b)
    for x, y in zip(tree.leaves(a), tree.leaves(b), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_ensemble_init_members_equal_single_inits():
    params, state = ensemble_init(MODEL, random.key(0), 3)
    keys = random.split(random.key(0), 3)
    for i in range(3):
        p, s = MODEL.init(keys[i])
        assert tree.all_equal(_member(params, i), p) and tree.all_equal(_member(state, i), s)
    assert all(t.is_contiguous() and t.stride()[0] > 0 for t in tree.leaves(state) if t.numel() > 1)


@pytest.mark.parametrize("shared", [True, False])
def test_members_equal_training_alone(shared):
    n = 3
    ls = amp.DynamicLossScale(init_scale=256.0)
    stacked = ensemble_train_state(MODEL, OPT, random.key(0), n, loss_scale=ls)
    step = make_ensemble_train_step(MODEL, losses.cross_entropy, OPT, shared_batch=shared, compile=False)
    single = make_train_step(MODEL, losses.cross_entropy, OPT, compile=False)
    singles = [TrainState.create(MODEL, OPT, k, loss_scale=ls) for k in random.split(random.key(0), n)]
    for t in range(2):
        batch = _data(t) if shared else _data(t, lead=(n,))
        keys = random.split(random.key(100 + t), n)
        stacked, metrics = step(stacked, batch, keys)
        assert metrics["loss"].shape == (n,)
        for i in range(n):
            b = batch if shared else tuple(x[i] for x in batch)
            singles[i], m = single(singles[i], b, keys[i])
            torch.testing.assert_close(metrics["loss"][i], m["loss"])
    for i in range(n):
        _assert_close(_member(stacked, i), singles[i])


def test_compiled_ensemble_step_equals_eager():
    model = MLP(4, (8,), 3)
    stacked = ensemble_train_state(model, OPT, random.key(0), 2)
    keys = random.split(random.key(1), 2)
    eager = make_ensemble_train_step(model, losses.cross_entropy, OPT, compile=False)(stacked, _data(), keys)
    compiled = make_ensemble_train_step(model, losses.cross_entropy, OPT)(stacked, _data(), keys)
    _assert_close(compiled, eager)


def test_rejects_wrong_number_of_keys():
    stacked = ensemble_train_state(MODEL, OPT, random.key(0), 3)
    step = make_ensemble_train_step(MODEL, losses.cross_entropy, OPT, compile=False)
    with pytest.raises(ValueError, match=r"make_ensemble_train_step: step: keys must be int64 \[3, 2\]"):
        step(stacked, _data(), random.split(random.key(0), 2))


def test_rejects_unstacked_state():
    step = make_ensemble_train_step(MODEL, losses.cross_entropy, OPT, compile=False)
    with pytest.raises(ValueError, match=r"make_ensemble_train_step: step: train_state must be stacked"):
        step(TrainState.create(MODEL, OPT, random.key(0)), _data(), random.split(random.key(0), 3))


def test_rejects_bad_member_count():
    with pytest.raises(ValueError, match=r"deepfn.train.ensemble_init: n must be a positive int; got 0"):
        ensemble_init(MODEL, random.key(0), 0)

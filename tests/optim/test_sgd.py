"""SGD against torch.optim.SGD at every step of a 50-step random gradient sequence."""

from __future__ import annotations

import pytest
import torch

from deepfn import optim

from .trajectory import run_against_torch

CASES = {
    "plain": dict(lr=0.05),
    "momentum": dict(lr=0.05, momentum=0.9),
    "dampening": dict(lr=0.05, momentum=0.9, dampening=0.3),
    "nesterov": dict(lr=0.05, momentum=0.8, nesterov=True),
    "weight_decay": dict(lr=0.05, weight_decay=0.1),
    "all": dict(lr=0.03, momentum=0.9, weight_decay=0.05, nesterov=True),
    "wd_dampening": dict(lr=0.03, momentum=0.5, dampening=0.5, weight_decay=0.01),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sgd_matches_torch(case, dtype):
    kw = CASES[case]
    run_against_torch(optim.sgd(**kw), lambda ps: torch.optim.SGD(ps.values(), foreach=False, **kw), dtype)


def test_sgd_matches_torch_foreach():
    kw = dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)
    run_against_torch(optim.sgd(**kw), lambda ps: torch.optim.SGD(ps.values(), foreach=True, **kw), torch.float32)


def test_sgd_schedule_lr_and_cycled_momentum(dtype):
    """OneCycleLR with cycle_momentum rewrites SGD's momentum each step; both as schedules."""
    T = 50
    opt = optim.sgd(lr=optim.one_cycle(0.1, T), momentum=optim.one_cycle_momentum(T), nesterov=False)

    def sched(o):
        return torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=T)

    run_against_torch(opt, lambda ps: torch.optim.SGD(ps.values(), lr=0.1, momentum=0.9, foreach=False), dtype,
                      steps=T, make_scheduler=sched)


def test_sgd_lambda_schedule(dtype):
    sch = optim.linear_warmup(0.1, 10)
    run_against_torch(
        optim.sgd(sch, momentum=0.9), lambda ps: torch.optim.SGD(ps.values(), lr=0.1, momentum=0.9, foreach=False),
        dtype, make_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda n: min(n, 10) / 10))


def test_sgd_state_structure_and_dtype(dtype):
    params = {"a": torch.ones(3, dtype=dtype), "b": {"c": torch.zeros(2, 2, dtype=dtype)}}
    opt = optim.sgd(0.1, momentum=0.9)
    state = opt.init(params)
    updates, new_state = opt.update(params, state, params)
    for s in (state, new_state):
        decay, trace, lr = s
        assert trace.count.dtype == torch.int64 and trace.count.ndim == 0
        assert trace.trace["b"]["c"].dtype == dtype and trace.trace["b"]["c"].shape == (2, 2)
        assert lr.count.dtype == torch.int64
    assert new_state[1].count.item() == 1 and state[1].count.item() == 0   # init state not mutated
    assert updates["b"]["c"].dtype == dtype


@pytest.mark.parametrize("kw, match", [
    (dict(lr=-0.1), "lr must be"),
    (dict(lr=0.1, momentum=-0.5), "momentum must be"),
    (dict(lr=0.1, weight_decay=-1.0), "weight_decay must be"),
    (dict(lr=0.1, dampening=1.5), "dampening must be"),
    (dict(lr=0.1, nesterov=True), "nesterov=True requires momentum > 0"),
    (dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "nesterov=True requires momentum > 0 and dampening == 0"),
])
def test_sgd_rejects_bad_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=f"deepfn.optim.sgd: {match}"):
        optim.sgd(**kw)


def test_sgd_rejects_non_number_lr():
    with pytest.raises(TypeError, match="deepfn.optim.sgd: lr must be a number"):
        optim.sgd("0.1")


def test_sgd_update_rejects_mismatched_tree():
    params = {"a": torch.ones(2)}
    opt = optim.sgd(0.1, momentum=0.9)
    with pytest.raises(ValueError, match="deepfn.optim.trace: updates must have the structure"):
        opt.update({"b": torch.ones(2)}, opt.init(params), {"b": torch.ones(2)})

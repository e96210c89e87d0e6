"""Schedules value by value against torch.optim.lr_scheduler and their formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import vmap

from deepfn import optim
from deepfn.optim import schedules as sch


def torch_lrs(make_scheduler, steps, lr=1.0, momentum=None):
    """The lr (and momentum/beta1) torch uses at updates 0..steps-1 (+ the value after the last step)."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr, momentum=0.9) if momentum == "sgd" else torch.optim.SGD([p], lr=lr)
    s = make_scheduler(opt)
    lrs, moms = [], []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
        opt.step()
        s.step()
    lrs.append(opt.param_groups[0]["lr"])
    moms.append(opt.param_groups[0]["momentum"])
    return lrs, moms


def check_values(schedule, expected, rtol=1e-12):
    for n, e in enumerate(expected):
        v = schedule(n)
        assert isinstance(v, float), f"int step {n} must give a Python float; got {type(v)}"
        assert math.isclose(v, e, rel_tol=rtol, abs_tol=1e-15), f"step {n}: {v} != {e}"
        t = schedule(torch.tensor(n))
        assert t.dtype == torch.float64 and t.ndim == 0
        assert math.isclose(t.item(), e, rel_tol=rtol, abs_tol=1e-15), f"tensor step {n}: {t.item()} != {e}"


def test_one_cycle_torch_notes_values():
    expected = [0.04, 0.52, 1.0, 0.950485, 0.811746, 0.611262, 0.388742, 0.188258, 0.049519, 4e-06]
    f = optim.one_cycle(1.0, 10)
    assert [round(f(n), 6) for n in range(10)] == expected
    assert f(0) == 1.0 / 25.0


@pytest.mark.parametrize("total", [10, 37, 100])
@pytest.mark.parametrize("strategy", ["cos", "linear"])
@pytest.mark.parametrize("three_phase", [False, True])
@pytest.mark.parametrize("pct", [0.3, 0.25])
def test_one_cycle_matches_torch(total, strategy, three_phase, pct):
    kw = dict(pct_start=pct, anneal_strategy=strategy, three_phase=three_phase, div_factor=10.0, final_div_factor=100.0)
    lrs, moms = torch_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.5, total_steps=total, **kw),
                          total, momentum="sgd")
    check_values(optim.one_cycle(0.5, total, **kw), lrs)
    mkw = dict(pct_start=pct, anneal_strategy=strategy, three_phase=three_phase)
    check_values(optim.one_cycle_momentum(total, **mkw), moms)


def test_one_cycle_past_total_steps_raises_like_torch():
    f = optim.one_cycle(1.0, 10)
    f(10)                                                    # torch computes this one too
    with pytest.raises(ValueError, match="Tried to step 11 times. The specified number of total steps is 10"):
        f(11)
    with pytest.raises(ValueError, match="Tried to step 12 times"):
        f(torch.tensor(12))


def test_one_cycle_past_total_steps_is_nan_under_vmap():
    f = optim.one_cycle(1.0, 10)
    out = vmap(f)(torch.tensor([3, 11]))
    assert math.isclose(out[0].item(), f(3)) and math.isnan(out[1].item())


@pytest.mark.parametrize("kw, match", [
    (dict(pct_start=1.5), r"pct_start must be in \[0.0, 1.0\]"),
    (dict(pct_start=-0.1), r"pct_start must be in"),
    (dict(pct_start=0.05), r"pct_start=0.05 with total_steps=10 gives an empty phase"),
    (dict(anneal_strategy="cosine"), r"anneal_strategy must be one of \['cos', 'linear'\]"),
    (dict(total_steps=0), "total_steps must be an int >= 1"),
    (dict(max_lr=-1.0), "max_lr must be"),
    (dict(div_factor=0.0), "div_factor must be"),
])
def test_one_cycle_rejects_bad_arguments(kw, match):
    args = dict(max_lr=1.0, total_steps=10) | kw
    with pytest.raises(ValueError, match=f"deepfn.optim.one_cycle: {match}"):
        optim.one_cycle(**args)


def test_cosine_decay_matches_torch_cosine_annealing():
    T = 40
    lrs, _ = torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=T, eta_min=0.2 * 0.3), T, lr=0.3)
    check_values(optim.cosine_decay(0.3, T, alpha=0.2), lrs, rtol=1e-10)


def test_cosine_decay_formula_with_warmup_and_after_the_end():
    lr, D, W, a = 0.1, 20, 5, 0.05
    f = optim.cosine_decay(lr, D, alpha=a, warmup_steps=W)
    expected = [lr * n / W if n < W else
                lr * (a + (1 - a) * (1 + math.cos(math.pi * min(n - W, D) / D)) / 2) for n in range(40)]
    check_values(f, expected)
    assert f(W + D + 100) == pytest.approx(a * lr)


def test_linear_warmup_matches_lambda_lr():
    lrs, _ = torch_lrs(lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda n: min(n, 8) / 8), 20, lr=0.5)
    check_values(optim.linear_warmup(0.5, 8), lrs)
    f = optim.linear_warmup(0.5, 8, init_value=0.1)
    assert f(0) == 0.1 and f(8) == 0.5 and f(100) == 0.5


def test_noam_formula():
    d, w = 512, 4000
    expected = [d ** -0.5 * min((n + 1) ** -0.5, (n + 1) * w ** -1.5) for n in range(0, 10000, 97)]
    f = optim.noam(d, w)
    for n, e in zip(range(0, 10000, 97), expected, strict=False):
        assert f(n) == pytest.approx(e, rel=1e-12)
        assert f(torch.tensor(n)).item() == pytest.approx(e, rel=1e-12)
    assert max(range(0, 8000), key=f) == w - 1                 # peak where s == warmup


def test_constant():
    check_values(optim.constant(0.25), [0.25] * 5)


def test_join_switches_and_restarts():
    f = sch.join([optim.linear_warmup(1.0, 4), optim.cosine_decay(1.0, 10), optim.constant(0.01)], [4, 14])
    warm, cos = optim.linear_warmup(1.0, 4), optim.cosine_decay(1.0, 10)
    expected = [warm(n) for n in range(4)] + [cos(n) for n in range(10)] + [0.01] * 5
    check_values(f, expected)


def test_join_with_one_cycle_tensor_step_does_not_raise_past_its_end():
    f = sch.join([optim.one_cycle(1.0, 10), optim.constant(1e-4)], [10])
    assert f(torch.tensor(50)).item() == pytest.approx(1e-4)
    assert f(torch.tensor(2)).item() == pytest.approx(1.0)


def test_schedules_batch_under_vmap():
    steps = torch.arange(12)
    for f in (optim.cosine_decay(0.1, 10, warmup_steps=2), optim.noam(64, 4), optim.one_cycle(1.0, 20),
              optim.linear_warmup(1.0, 5)):
        out = vmap(f)(steps)
        assert torch.allclose(out, torch.tensor([f(int(n)) for n in steps], dtype=torch.float64), rtol=1e-12)


@pytest.mark.parametrize("step, exc, match", [
    (-1, ValueError, "step must be >= 0"),
    (1.5, TypeError, "step must be an int or a 0-d integer tensor; got float"),
    (True, TypeError, "step must be an int"),
    (torch.tensor(1.0), TypeError, r"step must be an int or a 0-d integer tensor; got float32 \[\]"),
    (torch.tensor([1, 2]), ValueError, r"step must be an int or a 0-d integer tensor; got int64 \[2\]"),
])
def test_schedules_reject_bad_steps(step, exc, match):
    with pytest.raises(exc, match=f"deepfn.optim.cosine_decay: {match}"):
        optim.cosine_decay(0.1, 10)(step)


@pytest.mark.parametrize("make, match", [
    (lambda: optim.constant(-1.0), "constant: lr must be"),
    (lambda: optim.linear_warmup(0.1, 0), "linear_warmup: warmup_steps must be an int >= 1"),
    (lambda: optim.cosine_decay(0.1, 0), "cosine_decay: decay_steps must be"),
    (lambda: optim.cosine_decay(0.1, 10, alpha=2.0), "cosine_decay: alpha must be"),
    (lambda: optim.noam(0, 10), "noam: d_model must be"),
    (lambda: sch.join([optim.constant(1.0)], [3]), "join: needs len"),
    (lambda: sch.join([optim.constant(1.0)] * 3, [5, 5]), "join: boundaries must increase"),
])
def test_schedule_constructors_reject_bad_arguments(make, match):
    with pytest.raises(ValueError, match=f"deepfn.optim.{match}"):
        make()

"""DynamicLossScale against torch.amp.GradScaler; every field survives tree operations."""

import dataclasses

import pytest
import torch

from deepfn import tree
from deepfn.amp import DynamicLossScale, NoOpLossScale, all_finite


@pytest.mark.parametrize("interval", [1, 2, 3])
def test_matches_grad_scaler_on_scripted_sequence(interval):
    finite = [True, False, True, True, True, False, False, True, True, True, True, True]
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=interval)
    ours = DynamicLossScale(init_scale=1024.0, growth_interval=interval)
    for ok in finite:
        opt.zero_grad()
        scaler.scale((p * p).sum()).backward()
        if not ok:
            p.grad[1] = float("nan")
        scaler.step(opt)
        scaler.update()
        grads = {"g": p.grad.clone()}
        assert bool(all_finite(grads)) == ok
        ours = ours.adjust(all_finite(grads))
        assert float(ours.loss_scale) == scaler.get_scale()
        assert int(ours.counter) == scaler._get_growth_tracker()


def test_growth_that_overflows_keeps_the_scale():
    ls = DynamicLossScale(init_scale=torch.finfo(torch.float32).max, growth_interval=1)
    assert float(ls.adjust(torch.tensor(True)).loss_scale) == torch.finfo(torch.float32).max


def test_every_field_survives_flatten_stack_and_replace():
    ls = DynamicLossScale(init_scale=4.0, growth_interval=7, growth_factor=3.0, backoff_factor=0.25)
    ls = dataclasses.replace(ls, counter=torch.tensor(5))
    assert len(tree.leaves(ls)) == len(dataclasses.fields(ls))
    back = tree.unflatten_leaves(tree.structure(ls), tree.leaves(ls))
    assert tree.all_equal(back, ls)
    (one,) = tree.unstack(tree.stack([ls]))
    assert tree.all_equal(one, ls)
    mapped = tree.map(lambda x: x.clone(), ls)
    assert float(mapped.backoff_factor) == 0.25 and int(mapped.growth_interval) == 7
    # The hyper-parameters drive adjust after a round trip (jmp#44 lost min_loss_scale here).
    assert float(back.adjust(torch.tensor(False)).loss_scale) == 1.0
    assert float(back.adjust(torch.tensor(True)).loss_scale) == 4.0
    assert float(dataclasses.replace(back, counter=torch.tensor(6)).adjust(torch.tensor(True)).loss_scale) == 12.0


def test_vmap_over_stacked_loss_scales():
    stacked = tree.stack([DynamicLossScale(8.0, growth_interval=1), DynamicLossScale(2.0, growth_interval=1)])
    out = torch.func.vmap(lambda ls, f: ls.adjust(f))(stacked, torch.tensor([True, False]))
    assert out.loss_scale.tolist() == [16.0, 1.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_scale_and_unscale_keep_dtype(dtype):
    ls = DynamicLossScale(init_scale=256.0)
    loss = torch.tensor(1.5, dtype=dtype)
    assert ls.scale(loss).dtype == dtype and float(ls.scale(loss)) == 384.0
    grads = {"a": torch.full((2,), 512.0, dtype=dtype), "n": torch.arange(2)}
    out = ls.unscale(grads)
    assert out["a"].dtype == dtype and out["a"].tolist() == [2.0, 2.0]
    assert out["n"].tolist() == [0, 1]


def test_all_finite():
    assert bool(all_finite({"a": torch.ones(2), "i": torch.arange(2)}))
    assert not bool(all_finite({"a": torch.ones(2), "b": [torch.tensor([1.0, float("inf")])]}))
    assert not bool(all_finite(torch.tensor(float("nan"))))
    assert all_finite({}).dtype == torch.bool and all_finite({}).ndim == 0


def test_noop_loss_scale():
    ls = NoOpLossScale()
    x = torch.ones(2)
    assert ls.scale(x) is x and ls.unscale(x) is x and ls.adjust(torch.tensor(False)) is ls


def test_adjust_rejects_non_bool():
    with pytest.raises(TypeError, match=r"DynamicLossScale.adjust: grads_finite must be a bool tensor"):
        DynamicLossScale().adjust(torch.tensor(1.0))


def test_rejects_bad_growth_interval():
    with pytest.raises(ValueError, match=r"DynamicLossScale: growth_interval must be a positive int"):
        DynamicLossScale(growth_interval=0)


def test_rejects_bad_growth_factor():
    with pytest.raises(ValueError, match=r"DynamicLossScale: growth_factor must be > 1"):
        DynamicLossScale(growth_factor=0.5)


def test_rejects_bad_backoff_factor():
    with pytest.raises(ValueError, match=r"DynamicLossScale: backoff_factor must be in \(0, 1\)"):
        DynamicLossScale(backoff_factor=1.5)


def test_rejects_bad_init_scale():
    with pytest.raises(ValueError, match=r"DynamicLossScale: init_scale must be > 0"):
        DynamicLossScale(init_scale=0.0)

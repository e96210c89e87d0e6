"""The units behind make_train_step, each equal to the reference it replaces: the gradient
engines, the fused unscale-and-check, the skip, clipping given the norm, micro-batches, the
donated-state alias check."""

import pytest
import torch

from deepfn import amp, losses, optim, random, tree
from deepfn.models import MLP
from deepfn.optim.clipping import clip_given_norm
from deepfn.train import TrainState
from deepfn.train.donate import UnaliasedCheck
from deepfn.train.finite import keep_if, unscale_and_check
from deepfn.train.grad_engines import AUTOGRAD, FUNCTORCH, accumulate_micro_batch, choose_engine
from deepfn.train.objective import make_objective, micro_batch, micro_key

MODEL = MLP(6, (8,), 3, batch_norm=True, dropout_rate=0.2)


def _grads(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(4, 3, generator=g), "b": [torch.randn(5, generator=g), torch.randn(2, 2, generator=g)]}


def test_engines_give_torch_func_gradients_and_add_to_the_sum():
    params, state = MODEL.init(random.key(0))
    objective = make_objective(MODEL, losses.cross_entropy, None)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    args = (state, x, y, random.key(1), amp.NoOpLossScale())
    expected, (value, (loss, _, new_state)) = torch.func.grad_and_value(objective, has_aux=True)(params, *args)
    for engine in (FUNCTORCH, AUTOGRAD):
        got, (v, (lo, _, s)) = accumulate_micro_batch(engine, objective, objective, params, args, None, last=True, k=1)
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close((v, lo, s), (value, loss, new_state))
        summed, _ = accumulate_micro_batch(engine, objective, objective, params, args, expected, last=True, k=1)
        torch.testing.assert_close(summed, tree.map(lambda g: 2 * g, expected))


def test_choose_engine_is_autograd_eagerly_and_functorch_under_vmap():
    params = {"w": torch.ones(3)}
    assert choose_engine(params, None) == AUTOGRAD
    seen = []
    torch.func.vmap(lambda w: seen.append(choose_engine({"w": w}, None)) or w)(torch.ones(2, 3))
    assert seen == [FUNCTORCH]


@pytest.mark.parametrize("bad", [False, True])
@pytest.mark.parametrize("scaled", [False, True])
def test_unscale_and_check_equals_the_reference(scaled, bad):
    grads = _grads()
    if bad:
        grads["b"][1][0, 1] = float("nan")
    scale = amp.DynamicLossScale(init_scale=8.0) if scaled else None
    ref = scale.unscale(grads) if scaled else grads
    got, ok, norm = unscale_and_check(scale, tree.map(torch.clone, grads), owned=True)
    assert bool(ok) == (not bad) == bool(amp.all_finite(ref))
    torch.testing.assert_close(got, ref, equal_nan=True)
    torch.testing.assert_close(norm, tree.global_norm(ref), equal_nan=True)


def test_a_norm_that_overflows_is_checked_leaf_by_leaf():
    huge = {"w": torch.full((4,), 3e38)}   # finite values whose squares overflow float32
    _, ok, norm = unscale_and_check(None, huge, owned=True)
    assert not torch.isfinite(norm) and bool(ok)


def test_keep_if_branches_eagerly_and_selects_under_vmap():
    new, old = {"a": torch.ones(2), "n": 1}, {"a": torch.zeros(2), "n": 1}
    assert keep_if(torch.tensor(True), new, old) is new and keep_if(torch.tensor(False), new, old) is old
    flags = torch.tensor([True, False])
    got = torch.func.vmap(lambda f, a, b: keep_if(f, {"a": a}, {"a": b})["a"])(flags, torch.ones(2, 2), torch.zeros(2, 2))
    assert torch.equal(got, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))


def test_clip_given_norm_equals_clip_by_global_norm():
    grads = _grads()
    expected, _ = optim.clip_by_global_norm(0.5).update(grads, optim.EmptyState())
    torch.testing.assert_close(clip_given_norm(grads, 0.5, tree.global_norm(grads)), expected)
    small = tree.map(lambda g: g * 1e-3, grads)
    assert tree.all_equal(clip_given_norm(small, 0.5, tree.global_norm(small)), small)


def test_micro_batches_and_keys():
    x = {"a": torch.arange(6), "b": torch.arange(12).reshape(6, 2)}
    parts = [micro_batch(x, 3, i) for i in range(3)]
    assert torch.equal(torch.cat([p["a"] for p in parts]), x["a"]) and parts[1]["b"].shape == (2, 2)
    key = random.key(3)
    assert micro_key(key, 1, 0) is key and micro_key(None, 2, 1) is None
    assert torch.equal(micro_key(key, 2, 1), random.fold_in(key, 1))


def test_unaliased_check_walks_only_states_it_did_not_return():
    opt = optim.adam(1e-2)
    ts = TrainState.create(MODEL, opt, random.key(0))
    check = UnaliasedCheck("here")
    check(ts)
    check.returned(ts)
    w = ts.params["network"]["0"]["weight"]
    aliased = ts.replace(opt_state=tree.map(lambda x: w if x.shape == w.shape and x.ndim == 2 else x, ts.opt_state))
    with pytest.raises(ValueError, match=r"^here: the leaves .* overlap in memory"):
        check(aliased)

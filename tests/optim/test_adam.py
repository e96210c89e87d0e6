"""Adam and AdamW against torch.optim at every step of a 50-step random gradient sequence."""

from __future__ import annotations

import pytest
import torch

from deepfn import optim, tree
from tests.utils import assert_trees_close

from .trajectory import make_params, run_against_torch

ADAM = {
    "default": dict(lr=1e-2),
    "wd": dict(lr=1e-2, weight_decay=0.1),
    "betas_eps": dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01),
}
ADAMW = {
    "default": dict(lr=1e-2),
    "no_wd": dict(lr=1e-2, weight_decay=0.0),
    "big_wd": dict(lr=1e-2, weight_decay=0.5),
    "betas_eps": dict(lr=3e-3, betas=(0.5, 0.9), eps=1e-4, weight_decay=0.05),
}


@pytest.mark.parametrize("in_place", [False, True], ids=["update", "in_place"])
@pytest.mark.parametrize("case", list(ADAM))
def test_adam_matches_torch(case, dtype, in_place):
    kw = ADAM[case]
    run_against_torch(optim.adam(**kw), lambda ps: torch.optim.Adam(ps.values(), foreach=False, **kw), dtype,
                      in_place=in_place)


@pytest.mark.parametrize("in_place", [False, True], ids=["update", "in_place"])
@pytest.mark.parametrize("case", list(ADAMW))
def test_adamw_matches_torch(case, dtype, in_place):
    kw = ADAMW[case]
    run_against_torch(optim.adamw(**kw), lambda ps: torch.optim.AdamW(ps.values(), foreach=False, **kw), dtype,
                      in_place=in_place)


def test_adamw_matches_torch_foreach_small_grads():
    """Tiny gradients make eps matter; the foreach twin too."""
    kw = dict(lr=1e-2, weight_decay=0.02, eps=1e-8)
    run_against_torch(optim.adamw(**kw), lambda ps: torch.optim.AdamW(ps.values(), foreach=True, **kw),
                      torch.float32, grad_scale=1e-7)


def test_adamw_default_weight_decay_is_torch_default():
    params = make_params(torch.float32)
    twin = {k: torch.nn.Parameter(v.clone()) for k, v in tree.flatten(params).items()}
    torch_opt = torch.optim.AdamW(twin.values(), lr=0.1)
    assert torch_opt.defaults["weight_decay"] == 1e-2
    grads = tree.map(torch.ones_like, params)
    for p in twin.values():
        p.grad = torch.ones_like(p)
    torch_opt.step()
    opt = optim.adamw(lr=0.1)
    updates, _ = opt.update(grads, opt.init(params), params)
    assert_trees_close(optim.apply_updates(params, updates), tree.unflatten({k: p.detach() for k, p in twin.items()}))


@pytest.mark.parametrize("make,in_place", [(optim.adam, False), (optim.adam, True), (optim.adamw, False),
                                           (optim.adamw, True)],
                         ids=["adam", "adam_in_place", "adamw", "adamw_in_place"])
def test_adam_cosine_schedule(make, in_place, dtype):
    lr, T = 1e-2, 50
    torch_cls = torch.optim.Adam if make is optim.adam else torch.optim.AdamW
    run_against_torch(
        make(optim.cosine_decay(lr, T, alpha=0.1), weight_decay=0.05),
        lambda ps: torch_cls(ps.values(), lr=lr, weight_decay=0.05, foreach=False), dtype,
        make_scheduler=lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=T, eta_min=0.1 * lr),
        in_place=in_place)


@pytest.mark.parametrize("in_place", [False, True], ids=["update", "in_place"])
def test_adam_mask_matches_torch_param_groups(dtype, in_place):
    """L2 decay for weights only (Adam adds it to the gradient), as two torch param groups."""
    def decay(path, leaf):
        return not path.endswith("bias")

    def make_torch(ps):
        return torch.optim.Adam([{"params": [p for k, p in ps.items() if decay(k, p)]},
                                 {"params": [p for k, p in ps.items() if not decay(k, p)], "weight_decay": 0.0}],
                                lr=1e-2, weight_decay=0.2, foreach=False)

    run_against_torch(optim.adam(1e-2, weight_decay=0.2, mask=decay), make_torch, dtype, in_place=in_place)


@pytest.mark.parametrize("in_place", [False, True], ids=["update", "in_place"])
def test_adamw_mask_matches_torch_param_groups(dtype, in_place):
    """No decay for biases and norms, chosen by path, equals two torch param groups."""
    def decay(path, leaf):
        return not (path.endswith("bias") or path.startswith("norm"))

    def make_torch(ps):
        yes = [p for k, p in ps.items() if decay(k, p)]
        no = [p for k, p in ps.items() if not decay(k, p)]
        return torch.optim.AdamW([{"params": yes}, {"params": no, "weight_decay": 0.0}], lr=1e-2,
                                 weight_decay=0.3, foreach=False)

    run_against_torch(optim.adamw(1e-2, weight_decay=0.3, mask=decay), make_torch, dtype, in_place=in_place)


def test_adam_mask_as_tree_of_bools(dtype):
    params = make_params(dtype)
    mask = tree.map(lambda x: x.ndim > 0, params)        # tree of Python bools, same structure
    mask["dense"]["bias"] = False
    opt = optim.adam(1e-2, weight_decay=0.5, mask=mask)
    ref = optim.adam(1e-2, weight_decay=0.5, mask=lambda p, x: p not in ("scale", "dense.bias"))
    u1, _ = opt.update(params, opt.init(params), params)
    u2, _ = ref.update(params, ref.init(params), params)
    assert_trees_close(u1, u2, rtol=0, atol=0)


def test_adam_state_structure_dtype_and_finite(dtype):
    params = make_params(dtype)
    opt = optim.adamw(1e-3)
    state = opt.init(params)
    for _ in range(3):
        updates, state = opt.update(tree.map(torch.ones_like, params), state, params)
    adam_state = state[0]
    assert isinstance(adam_state, optim.ScaleByAdamState)
    assert adam_state.count.dtype == torch.int64 and adam_state.count.ndim == 0 and adam_state.count.item() == 3
    assert tree.structure(adam_state.mu) == tree.structure(params)
    for leaf in tree.leaves(adam_state.mu) + tree.leaves(adam_state.nu) + tree.leaves(updates):
        assert leaf.dtype == dtype and torch.isfinite(leaf).all()


def test_adam_does_not_mutate_inputs():
    params = make_params(torch.float32)
    grads = tree.map(torch.ones_like, params)
    before = [x.clone() for x in tree.leaves(params) + tree.leaves(grads)]
    versions = [x._version for x in tree.leaves(params) + tree.leaves(grads)]
    opt = optim.adamw(1e-2)
    state = opt.init(params)
    mu_before = [x.clone() for x in tree.leaves(state[0].mu)]
    opt.update(grads, state, params)
    for x, b, v in zip(tree.leaves(params) + tree.leaves(grads), before, versions, strict=False):
        assert torch.equal(x, b) and x._version == v
    assert all(torch.equal(a, b) for a, b in zip(tree.leaves(state[0].mu), mu_before, strict=False))


@pytest.mark.parametrize("make", [optim.adam, optim.adamw])
@pytest.mark.parametrize("kw, match", [
    (dict(lr=-1e-3), "lr must be"),
    (dict(betas=(1.0, 0.999)), r"betas\[0\] must be in \[0.0, 1.0\)"),
    (dict(betas=(0.9, -0.1)), r"betas\[1\] must be"),
    (dict(betas=(0.9,)), "betas must be a pair"),
    (dict(eps=-1e-8), "eps must be"),
    (dict(weight_decay=-0.1), "weight_decay must be"),
])
def test_adam_rejects_bad_hyperparameters(make, kw, match):
    with pytest.raises(ValueError, match=f"deepfn.optim.{make.__name__}: {match}"):
        make(**kw)


def test_adamw_update_without_params_is_rejected():
    params = {"w": torch.ones(2)}
    opt = optim.adamw(1e-3)
    with pytest.raises(ValueError, match="add_decayed_weights: update needs params"):
        opt.update(params, opt.init(params))


def test_mask_with_wrong_structure_is_rejected():
    params = {"w": torch.ones(2), "b": torch.ones(2)}
    opt = optim.adamw(1e-3, mask={"w": True})
    with pytest.raises(ValueError, match="add_decayed_weights: mask must have the structure of params"):
        opt.update(params, opt.init(params), params)


def test_mask_with_non_bool_leaves_is_rejected():
    params = {"w": torch.ones(2)}
    opt = optim.adamw(1e-3, mask={"w": torch.tensor(True)})
    with pytest.raises(TypeError, match="add_decayed_weights: mask leaves must be Python bools"):
        opt.update(params, opt.init(params), params)


@pytest.mark.parametrize("make, twin, in_place", [(optim.adam, torch.optim.Adam, False),
                                                   (optim.adam, torch.optim.Adam, True),
                                                   (optim.adamw, torch.optim.AdamW, False),
                                                   (optim.adamw, torch.optim.AdamW, True)],
                         ids=["adam", "adam_in_place", "adamw", "adamw_in_place"])
def test_adam_cycled_beta1_matches_one_cycle_lr(make, twin, in_place, dtype):
    """OneCycleLR(cycle_momentum=True) rewrites Adam's beta1 each step; deepfn takes it as a schedule."""
    T = 50
    opt = make(optim.one_cycle(0.01, T), betas=(optim.one_cycle_momentum(T), 0.99), weight_decay=0.01)

    def sched(o):
        return torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.01, total_steps=T)

    run_against_torch(opt, lambda ps: twin(ps.values(), lr=0.01, betas=(0.9, 0.99), weight_decay=0.01,
                                           foreach=False), dtype, steps=T, make_scheduler=sched, in_place=in_place)


def test_adam_cycled_beta1_under_compile_and_vmap():
    T = 20
    opt = optim.adamw(optim.one_cycle(0.01, T), betas=(optim.one_cycle_momentum(T), 0.99))
    params = make_params(torch.float32)
    grads = tree.map(torch.ones_like, params)
    state = opt.init(params)
    eager = opt.update(grads, state, params)
    compiled = torch.compile(opt.update, backend="aot_eager", fullgraph=True)(grads, state, params)
    assert_trees_close(compiled, eager, rtol=1e-6, atol=1e-7)
    stacked = tree.map(lambda t: torch.stack([t, t]), (grads, state, params))
    batched = torch.vmap(opt.update)(*stacked)
    assert_trees_close(tree.map(lambda t: t[1], batched), eager, rtol=1e-6, atol=1e-7)

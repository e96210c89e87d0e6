"""Donated optimizer state and params: the same numbers as the pure update, written in place."""

from __future__ import annotations

import pytest
import torch

from deepfn import optim, tree
from tests.optim.trajectory import make_params

OPTIMIZERS = {
    "adamw": lambda: optim.adamw(1e-2, weight_decay=0.1),
    "adamw_masked": lambda: optim.adamw(1e-2, weight_decay=0.1, mask=lambda path, _: not path.endswith("bias")),
    "adamw_scheduled": lambda: optim.adamw(optim.one_cycle(1e-2, 20), betas=(optim.one_cycle_momentum(20), 0.99)),
    "adam": lambda: optim.adam(1e-2, weight_decay=0.01),
    "scale_by_adam": lambda: optim.scale_by_adam(),
    "sgd_momentum": lambda: optim.sgd(0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
    "sgd_nesterov": lambda: optim.sgd(0.1, momentum=0.9, nesterov=True),
    "clipped_adamw": lambda: optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(1e-2)),
}


def _grads(params, n):
    g = torch.Generator().manual_seed(100 + n)
    return tree.map(lambda p: torch.randn(p.shape, generator=g, dtype=p.dtype), params)


def _run(opt, steps, donate, step_fn=None):
    params = make_params(torch.float32)
    state = opt.init(params)

    def one(p, s, g):
        u, s = opt.update(g, s, p, donate_state=donate)
        return optim.apply_updates(p, u, donate_params=donate), s

    fn = step_fn(one) if step_fn else one
    first = (params, state)
    for n in range(steps):
        params, state = fn(params, state, _grads(params, n))
    return first, params, state


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_donated_eager_updates_equal_pure_ones_and_reuse_the_buffers(name):
    opt = OPTIMIZERS[name]()
    assert optim.donates(opt)
    _, p_pure, s_pure = _run(opt, 6, donate=False)
    (p0, s0), p_don, s_don = _run(opt, 6, donate=True)
    assert tree.all_equal((p_don, s_don), (p_pure, s_pure))
    # The donated tensors are the ones written: every param and every moment buffer.
    assert all(a is b for a, b in zip(tree.leaves(p_don), tree.leaves(p0), strict=True))
    big = [(a, b) for a, b in zip(tree.leaves(s_don), tree.leaves(s0), strict=True) if a.ndim > 0]
    assert big and all(a is b for a, b in big)


def test_pure_update_writes_nothing():
    opt = optim.adamw(1e-2)
    params = make_params(torch.float32)
    state = opt.init(params)
    before = tree.map(torch.clone, (params, state))
    u, _ = opt.update(_grads(params, 0), state, params)
    optim.apply_updates(params, u)
    assert tree.all_equal((params, state), before)


def test_donated_compiled_updates_equal_pure_ones():
    opt = OPTIMIZERS["adamw_scheduled"]()
    _, p_pure, s_pure = _run(opt, 3, donate=False)
    (p0, _), p_don, s_don = _run(opt, 3, donate=True, step_fn=lambda f: torch.compile(f, fullgraph=True))
    torch.testing.assert_close((p_don, s_don), (p_pure, s_pure), rtol=1e-6, atol=1e-7)
    assert all(a is b for a, b in zip(tree.leaves(p_don), tree.leaves(p0), strict=True))


def test_donation_under_vmap_is_ignored_and_correct():
    opt = optim.adam(1e-2)
    stacked = tree.map(lambda *xs: torch.stack(xs), make_params(torch.float32, 0), make_params(torch.float32, 1))
    state = torch.func.vmap(opt.init)(stacked)
    grads = _grads(stacked, 0)

    def one(p, s, g, donate):
        u, s = opt.update(g, s, p, donate_state=donate)
        return optim.apply_updates(p, u, donate_params=donate), s

    pure = torch.func.vmap(lambda p, s, g: one(p, s, g, False))(stacked, state, grads)
    before = tree.map(torch.clone, (stacked, state))
    donated = torch.func.vmap(lambda p, s, g: one(p, s, g, True))(stacked, state, grads)
    assert tree.all_equal(donated, pure)
    assert tree.all_equal((stacked, state), before)


def test_user_transform_without_donation_is_left_alone():
    scale = optim.GradientTransformation(lambda p: optim.EmptyState(), lambda u, s, p=None: (tree.map(lambda x: -x, u), s))
    opt = optim.chain(scale, optim.adam(1e-2))
    assert optim.donates(opt) and not optim.donates(scale)
    _, p_pure, _ = _run(opt, 2, donate=False)
    _, p_don, _ = _run(opt, 2, donate=True)
    assert tree.all_equal(p_don, p_pure)

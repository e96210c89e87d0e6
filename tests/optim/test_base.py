"""chain / identity / apply_updates, and optimizers under vmap (ensembles) and torch.compile."""

from __future__ import annotations

import pytest
import torch
from torch.func import vmap

from deepfn import optim, tree
from tests.utils import assert_trees_close

from .trajectory import make_params


def test_identity_and_chain_of_identities():
    params = make_params(torch.float32)
    opt = optim.chain(optim.identity(), optim.identity())
    updates, state = opt.update(params, opt.init(params), params)
    assert updates is params and state == (optim.EmptyState(), optim.EmptyState())


def test_chain_equals_manual_composition():
    params = make_params(torch.float32)
    grads = tree.map(lambda x: 3 * x + 1, params)
    a, b = optim.clip_by_global_norm(1.0), optim.sgd(0.1, momentum=0.9)
    u1, _ = optim.chain(a, b).update(grads, optim.chain(a, b).init(params), params)
    mid, _ = a.update(grads, a.init(params), params)
    u2, _ = b.update(mid, b.init(params), params)
    assert_trees_close(u1, u2, rtol=0, atol=0)


def test_apply_updates_keeps_param_dtype_and_structure():
    params = {"a": torch.ones(2, dtype=torch.float64), "b": [torch.ones(3)]}
    updates = {"a": torch.ones(2, dtype=torch.float32), "b": [torch.ones(3)]}
    out = optim.apply_updates(params, updates)
    assert out["a"].dtype == torch.float64 and torch.equal(out["b"][0], torch.full((3,), 2.0))
    assert torch.equal(params["a"], torch.ones(2, dtype=torch.float64))


def test_apply_updates_rejects_mismatched_trees():
    with pytest.raises(ValueError, match="deepfn.optim.apply_updates: updates must have the structure of params"):
        optim.apply_updates({"a": torch.ones(2)}, {"b": torch.ones(2)})


def test_chain_rejects_non_transformations():
    with pytest.raises(TypeError, match="deepfn.optim.chain: argument 1 must be a GradientTransformation"):
        optim.chain(optim.identity(), lambda x: x)


def test_chain_rejects_wrong_state():
    opt = optim.chain(optim.identity(), optim.identity())
    with pytest.raises(ValueError, match="deepfn.optim.chain: state must be a tuple of 2 states"):
        opt.update({}, (optim.EmptyState(),))


def test_update_rejects_bad_count():
    params = {"a": torch.ones(2)}
    opt = optim.scale_by_learning_rate(0.1)
    with pytest.raises(TypeError, match="scale_by_learning_rate: state.count must be a 0-d int64 tensor"):
        opt.update(params, optim.ScaleByScheduleState(count=3))


def _loop(opt, grads_seq, params):
    state = opt.init(params)
    for g in grads_seq:
        u, state = opt.update(g, state, params)
        params = optim.apply_updates(params, u)
    return params, state


@pytest.mark.parametrize("make", [
    lambda: optim.adamw(optim.cosine_decay(1e-2, 5), weight_decay=0.1, mask=lambda p, x: not p.endswith("bias")),
    lambda: optim.sgd(optim.one_cycle(0.1, 5), momentum=0.9, dampening=0.2, weight_decay=0.1),
    lambda: optim.chain(optim.clip_by_global_norm(0.5), optim.adam(1e-2, weight_decay=0.01)),
])
def test_vmap_ensemble_equals_loop(make):
    """Two stacked parameter sets under vmap (per-leaf path) equal two separate eager runs (foreach path)."""
    members = [make_params(torch.float32, seed=s) for s in (0, 1)]
    gen = torch.Generator().manual_seed(5)
    grads = [[tree.map(lambda x: torch.randn(x.shape, generator=gen), m) for m in members] for _ in range(4)]
    opt = make()
    expected = [_loop(opt, [g[i] for g in grads], m)[0] for i, m in enumerate(members)]

    params = tree.stack(members)
    state = vmap(opt.init)(params)
    step = vmap(lambda g, s, p: opt.update(g, s, p))
    for g in grads:
        u, state = step(tree.stack(g), state, params)
        params = vmap(optim.apply_updates)(params, u)
    assert_trees_close(params, tree.stack(expected), rtol=1e-5, atol=1e-6)


def test_decay_mask_by_path_on_stacked_params():
    """A rank rule would decay the stacked [n, out] biases; the path rule does not."""
    params = tree.stack([make_params(torch.float32, seed=s) for s in (0, 1)])
    zeros = tree.zeros_like(params)
    t = optim.add_decayed_weights(0.5, mask=lambda path, leaf: not path.endswith("bias"))
    out, _ = t.update(zeros, t.init(params), params)
    assert torch.equal(out["dense"]["bias"], zeros["dense"]["bias"])
    assert torch.equal(out["dense"]["weight"], 0.5 * params["dense"]["weight"])
    assert out["dense"]["bias"].ndim == 2                   # stacked: a rank rule would call it a matrix


def test_compiled_adamw_step_equals_eager_without_recompiles():
    params = {"w": torch.linspace(-1, 1, 6).reshape(2, 3), "b": torch.zeros(2)}
    opt = optim.adamw(optim.cosine_decay(1e-1, 4, warmup_steps=1), weight_decay=0.1,
                      mask=lambda p, x: p != "b")

    def step(params, state, grads):
        u, state = opt.update(grads, state, params)
        return optim.apply_updates(params, u), state

    compiled = torch.compile(step, fullgraph=True)
    grads = [tree.map(lambda x, c=0.3 * (i + 1): torch.full_like(x, c), params) for i in range(3)]
    p_e, s_e = params, opt.init(params)
    p_c, s_c = params, opt.init(params)
    for i, g in enumerate(grads):
        p_e, s_e = step(p_e, s_e, g)
        if i == 1:
            torch.compiler.set_stance("fail_on_recompile")
        try:
            p_c, s_c = compiled(p_c, s_c, g)
        finally:
            torch.compiler.set_stance("default")
        assert_trees_close(p_c, p_e, rtol=1e-6, atol=1e-7)
    assert s_c[0].count.item() == 3 and s_c[0].count.dtype == torch.int64


@pytest.mark.parametrize("make", [
    lambda: optim.adamw(1e-2, mask=lambda p, x: not p.endswith("bias")),
    lambda: optim.adam(1e-2, weight_decay=0.1),
    lambda: optim.sgd(0.1, momentum=0.9, weight_decay=0.1),
    lambda: optim.sgd(0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
    lambda: optim.chain(optim.clip_by_global_norm(0.1), optim.sgd(0.1), optim.add_decayed_weights(0.1)),
    lambda: optim.chain(optim.sgd(0.1, momentum=0.5), optim.clip_by_global_norm(0.1)),
    lambda: optim.chain(optim.clip_by_global_norm(0.1), optim.chain(optim.trace(0.9)), optim.scale_by_learning_rate(0.1)),
])
def test_updates_are_pure(make):
    """chain hands buffers on in place (eagerly): no tensor of the caller or of a state may change."""
    params = make_params(torch.float32)
    grads = tree.map(lambda x: 2 * x + 1, params)
    opt = make()
    state = opt.init(params)
    _, state = opt.update(grads, state, params)
    seen = tree.leaves(params) + tree.leaves(grads) + [x for x in tree.leaves(state) if isinstance(x, torch.Tensor)]
    copies = [(x.clone(), x._version) for x in seen]
    updates, new_state = opt.update(grads, state, params)
    for x, (c, v) in zip(seen, copies, strict=False):
        assert torch.equal(x, c) and x._version == v
    new_leaves = [x for x in tree.leaves(new_state) if isinstance(x, torch.Tensor)]
    # Every case ends in a transform with fresh outputs: updates share no memory with any state.
    assert not {u.data_ptr() for u in tree.leaves(updates)} & {x.data_ptr() for x in seen + new_leaves}
    again, _ = opt.update(grads, state, params)
    assert tree.all_equal(again, updates)

"""clip_by_global_norm against torch.nn.utils.clip_grad_norm_."""

from __future__ import annotations

import pytest
import torch
from torch.func import vmap

from deepfn import optim, tree
from tests.utils import assert_trees_close

from .trajectory import TOL, make_params, run_against_torch


@pytest.mark.parametrize("max_norm, scale", [(1.0, 1.0), (100.0, 1.0), (0.5, 1e-3), (2.0, 10.0)])
def test_clip_matches_clip_grad_norm(max_norm, scale, dtype):
    grads = tree.map(lambda x: scale * x, make_params(dtype, seed=3))
    twins = {k: torch.nn.Parameter(torch.zeros_like(v)) for k, v in tree.flatten(grads).items()}
    for k, p in twins.items():
        p.grad = tree.flatten(grads)[k].clone()
    torch.nn.utils.clip_grad_norm_(list(twins.values()), max_norm)
    clipped, _ = optim.clip_by_global_norm(max_norm).update(grads, optim.EmptyState())
    assert_trees_close(clipped, tree.unflatten({k: p.grad for k, p in twins.items()}), **TOL[dtype])


def test_clip_then_adamw_trajectory(dtype):
    """clip_grad_norm_ before every AdamW step equals chain(clip, adamw)."""
    class ClippedAdamW(torch.optim.AdamW):
        def step(self):
            torch.nn.utils.clip_grad_norm_([p for g in self.param_groups for p in g["params"]], 1.0)
            return super().step()

    run_against_torch(optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(1e-2)),
                      lambda ps: ClippedAdamW(ps.values(), lr=1e-2, foreach=False), dtype)


def test_clip_under_vmap_equals_loop():
    grads = tree.stack([make_params(torch.float32, seed=s) for s in (0, 1)])
    clip = optim.clip_by_global_norm(1.0)
    out, _ = vmap(clip.update, in_dims=(0, None))(grads, optim.EmptyState())
    loop = tree.stack([clip.update(g, optim.EmptyState())[0] for g in tree.unstack(grads)])
    assert_trees_close(out, loop)


def test_clip_rejects_non_positive_max_norm():
    with pytest.raises(ValueError, match=r"deepfn.optim.clip_by_global_norm: max_norm must be in \(0.0, inf\]"):
        optim.clip_by_global_norm(0.0)


def test_clip_rejects_integer_leaves():
    with pytest.raises(TypeError, match="clip_by_global_norm: every update leaf must be a floating tensor"):
        optim.clip_by_global_norm(1.0).update({"a": torch.ones(2, dtype=torch.int64)}, optim.EmptyState())

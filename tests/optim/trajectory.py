"""Run a deepfn optimizer and its torch.optim twin on the same gradients; compare every step."""

from __future__ import annotations

import torch

from deepfn import optim, tree
from tests.utils import assert_trees_close

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-9, atol=1e-12)}


def make_params(dtype: torch.dtype, seed: int = 0) -> dict:
    """A mixed-shape tree: matrices, vectors, a 4-d kernel and a 0-d scalar."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"dense": {"weight": (5, 3), "bias": (5,)}, "conv": {"weight": (4, 2, 3, 3), "bias": (4,)},
              "norm": {"weight": (7,)}, "scale": ()}
    return _build(shapes, g, dtype)


def _build(node, g, dtype):
    if isinstance(node, dict):
        return {k: _build(v, g, dtype) for k, v in node.items()}
    return torch.randn(node, generator=g, dtype=dtype)


def run_against_torch(opt: optim.GradientTransformation, make_torch, dtype: torch.dtype, *, steps: int = 50,
                      make_scheduler=None, seed: int = 0, grad_scale: float = 1.0,
                      in_place: bool = False) -> None:
    """``in_place``: the optimizer's donated form (``opt.update.in_place``) writes each step into
    ``params`` and the state instead of ``update`` + ``apply_updates``."""
    params = make_params(dtype, seed)
    flat = tree.flatten(params)
    twins = {k: torch.nn.Parameter(v.clone()) for k, v in flat.items()}
    torch_opt = make_torch(twins)
    scheduler = make_scheduler(torch_opt) if make_scheduler else None
    state = opt.init(params)
    g = torch.Generator().manual_seed(seed + 1)
    for n in range(steps):
        grads = {k: grad_scale * torch.randn(v.shape, generator=g, dtype=dtype) for k, v in flat.items()}
        for k, p in twins.items():
            p.grad = grads[k].clone()
        torch_opt.step()
        if scheduler is not None:
            scheduler.step()
        if in_place:
            done = opt.update.in_place(tree.unflatten(grads), state, params)
            assert done is not None, "the in-place form refused plain CPU tensors"
            assert all(a is b for a, b in zip(tree.leaves(done[0]), tree.leaves(params), strict=True))
            params, state = done
        else:
            updates, state = opt.update(tree.unflatten(grads), state, params)
            params = optim.apply_updates(params, updates)
        try:
            assert_trees_close(params, tree.unflatten({k: p.detach() for k, p in twins.items()}), **TOL[dtype])
        except AssertionError as e:
            raise AssertionError(f"step {n}: {e}") from None

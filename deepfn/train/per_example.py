"""Per-example gradients (``vmap`` over ``grad``) and DP-SGD's clipped, noised aggregate.

Twin: Opacus' per-sample gradients (``GradSampleModule``) and its DP-SGD clipping, which
hook every layer; here one ``vmap(grad(loss_fn))`` gives them for any pure ``loss_fn``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import random, tree
from .._checks import describe
from ..typing import Key, Params, PyTree, Tensor

__all__ = ["per_example_grads", "clip_per_example", "dp_sgd_grads"]


def _one(x: Any) -> Any:
    return tree.map(lambda t: t.unsqueeze(0), x)


def per_example_grads(loss_fn: Callable[..., Tensor]) -> Callable[..., PyTree]:
    """``grads_fn(params, *data)``: the gradient of ``loss_fn`` for every example separately.

    Args:
        loss_fn: ``loss_fn(params, *data) -> scalar``; it is called on batches of one (every
            data leaf keeps a leading axis of size 1), so a batched loss works unchanged.

    Returns:
        ``grads_fn(params, *data)`` with every data leaf ``[b, ...]``; it returns the params
        tree with leaves ``[b, *param.shape]``: row ``i`` is ``grad(loss_fn)(params,
        *data[i:i+1])``. Compiles whole under ``torch.compile``.

    Examples:
        >>> import torch
        >>> f = per_example_grads(lambda p, x: (x @ p["w"]).sum())
        >>> f({"w": torch.ones(3)}, torch.ones(5, 3))["w"].shape
        torch.Size([5, 3])
    """
    single = torch.func.grad(lambda p, *d: loss_fn(p, *_one(d)))

    def grads_fn(params: Params, *data: Any) -> PyTree:
        _check_data("per_example_grads", data)
        return torch.func.vmap(single, in_dims=(None, *([0] * len(data))))(params, *data)

    return grads_fn


def _check_data(fn: str, data: tuple[Any, ...]) -> None:
    leaves = [x for x in tree.leaves(data) if isinstance(x, torch.Tensor)]
    if not leaves or any(x.ndim == 0 for x in leaves) or len({x.shape[0] for x in leaves}) != 1:
        raise ValueError(f"deepfn.train.{fn}: data must be tensors with one shared leading (batch) "
                         f"axis; got {[describe(x) for x in tree.leaves(data)]}")


def clip_per_example(grads: PyTree, max_norm: float) -> PyTree:
    """Scale each example's gradient (leaves ``[b, ...]``) by ``min(1, max_norm / (norm + 1e-6))``,
    its norm taken over all leaves (Opacus' flat clipping)."""
    if not (isinstance(max_norm, (int, float)) and max_norm > 0):
        raise ValueError(f"deepfn.train.clip_per_example: max_norm must be a positive float; got {max_norm!r}")
    leaves = tree.leaves(grads)
    sq = sum(torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1) ** 2 for g in leaves)
    factor = torch.clamp(max_norm / (torch.sqrt(sq) + 1e-6), max=1.0)
    return tree.map(lambda g: g * factor.reshape(-1, *([1] * (g.ndim - 1))).to(g.dtype), grads)


def dp_sgd_grads(loss_fn: Callable[..., Tensor], max_norm: float,
                 noise_multiplier: float = 0.0) -> Callable[..., PyTree]:
    """DP-SGD's gradient (Abadi et al. 2016): clip per example, sum, add noise, average.

    ``fn(params, *data, key=None)`` returns ``(sum_i clip(g_i) + N(0, (noise_multiplier *
    max_norm)^2)) / b`` leaf-wise, shaped like ``params``. ``key`` is required when
    ``noise_multiplier > 0``; each leaf draws its noise from its own split of ``key``.
    """
    if not (isinstance(noise_multiplier, (int, float)) and noise_multiplier >= 0):
        raise ValueError(f"deepfn.train.dp_sgd_grads: noise_multiplier must be >= 0; got {noise_multiplier!r}")
    if not (isinstance(max_norm, (int, float)) and max_norm > 0):
        raise ValueError(f"deepfn.train.dp_sgd_grads: max_norm must be a positive float; got {max_norm!r}")
    grads_fn = per_example_grads(loss_fn)

    def fn(params: Params, *data: Any, key: Key | None = None) -> PyTree:
        if noise_multiplier > 0 and key is None:
            raise ValueError("deepfn.train.dp_sgd_grads: noise_multiplier > 0 needs key=deepfn.random.key(seed) "
                             "(a fresh one per step)")
        clipped = clip_per_example(grads_fn(params, *data), max_norm)
        batch = tree.leaves(data)[0].shape[0]
        summed = tree.map(lambda g: g.sum(0), clipped)
        if noise_multiplier > 0:
            leaves = tree.leaves(summed)
            keys = random.split(key, len(leaves))
            std = noise_multiplier * max_norm
            noisy = [g + std * random.normal(k, tuple(g.shape), g.dtype).to(g.device)
                     for g, k in zip(leaves, keys.unbind(0), strict=True)]
            summed = tree.unflatten_leaves(tree.structure(summed), noisy)
        return tree.map(lambda g: g / batch, summed)

    return fn

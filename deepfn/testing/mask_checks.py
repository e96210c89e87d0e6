"""Sequence properties of a function ``fn(x) -> y`` over ``[b, t, ...]``: masked positions
do not leak into valid ones (``check_mask_invariance``), and no position sees the future
(``check_causal``). Replacement values come from ``deepfn.random`` with a fixed seed, so a
failure reproduces exactly.

Examples:
    >>> import torch
    >>> from deepfn.testing import check_causal
    >>> check_causal(lambda x: x.cumsum(1), torch.ones(2, 5, 3))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import random
from .._checks import describe
from ._report import compare_trees, guarded, owner_name

__all__ = ["check_causal", "check_mask_invariance"]


def _replacement(x: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Values unlike ``x`` but of its kind: floats spread wider than ``x``, integers (token
    ids) inside ``x``'s own range so that an embedding still accepts them."""
    if x.dtype == torch.bool:
        return random.bernoulli(key, 0.5, tuple(x.shape)).to(x.device)
    if x.is_floating_point():
        scale = 1.0 + 2.0 * float(x.detach().abs().amax()) if x.numel() else 1.0
        return random.uniform(key.to(x.device), tuple(x.shape), dtype=x.dtype, low=-scale, high=scale)
    if x.is_complex():
        raise TypeError(f"deepfn.testing: x must be real (floating, integer or bool); got {describe(x)}")
    low, high = (int(x.amin()), int(x.amax()) + 1) if x.numel() else (0, 1)
    return random.randint(key.to(x.device), tuple(x.shape), low, high).to(x.dtype)


def _check_args(fn_name: str, fn: Any, x: Any) -> None:
    if not callable(fn):
        raise TypeError(f"deepfn.testing.{fn_name}: fn must be callable fn(x) -> y; got {describe(fn)}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"deepfn.testing.{fn_name}: x must be a torch.Tensor [B, T, ...]; got {describe(x)}")
    if x.ndim < 2:
        raise ValueError(f"deepfn.testing.{fn_name}: x must be at least 2-d [B, T, ...]; got {describe(x)}")


def _call(check: str, owner: str, fn: Callable[[torch.Tensor], Any], x: torch.Tensor,
          b_t: tuple[int, int], doing: str) -> torch.Tensor:
    y = guarded(check, owner, doing, lambda: fn(x))
    if not isinstance(y, torch.Tensor) or y.ndim < 2 or tuple(y.shape[:2]) != b_t:
        raise ValueError(f"deepfn.testing: {owner} must return a tensor [B, T, ...] with [B, T] = "
                         f"{list(b_t)} like x; got {describe(y)}")
    return y


def _expand(mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[b, t]`` -> ``y``'s shape, broadcasting over the trailing axes."""
    return mask.reshape(mask.shape + (1,) * (y.ndim - 2)).expand(y.shape)


def check_mask_invariance(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, valid: torch.Tensor,
                          *, seed: int = 0, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Check that ``fn``'s output at valid positions ignores ``x`` at invalid (padded) ones.

    ``x`` is replaced where ``valid`` is False by values drawn from ``deepfn.random.key(seed)``
    (floats over a wider range than ``x``; integers within ``[x.min(), x.max()]``), and
    ``fn``'s output must not change where ``valid`` is True.

    Args:
        fn: ``x -> y``, e.g. ``lambda x: block.apply(params, state, x, mask=...)[0]``.
        x: ``[b, t, ...]``; floating, integer (token ids) or bool.
        valid: ``[b, t]`` bool, True at real positions.
        seed: seed of the replacement values.
        rtol, atol: tolerances of the comparison.

    Raises:
        AssertionError: ``"mask: ..."`` with the largest difference and its index ``[b, t, ...]``.
        TypeError: ``fn`` not callable, ``x`` not a tensor, ``valid`` not bool.
        ValueError: ``x`` below 2-d, ``valid`` not ``[b, t]``, ``y`` not ``[b, t, ...]``.
    """
    _check_args("check_mask_invariance", fn, x)
    if not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool:
        raise TypeError(f"deepfn.testing.check_mask_invariance: valid must be a bool tensor [B, T] "
                        f"(True = real position); got {describe(valid)}")
    if tuple(valid.shape) != tuple(x.shape[:2]):
        raise ValueError(f"deepfn.testing.check_mask_invariance: valid must have shape [B, T] = "
                         f"{list(x.shape[:2])} like x; got {describe(valid)}")
    owner = owner_name(fn)
    b_t = (x.shape[0], x.shape[1])
    y = _call("mask", owner, fn, x, b_t, "fn(x)")
    keep = valid.to(x.device).reshape(valid.shape + (1,) * (x.ndim - 2))
    x_other = torch.where(keep, x, _replacement(x, random.key(seed)))
    y_other = _call("mask", owner, fn, x_other, b_t, "fn(x with its invalid positions replaced)")
    show = _expand(valid.to(y.device), y)
    zero = torch.zeros((), dtype=y.dtype, device=y.device)
    compare_trees("mask", owner, "the output at valid positions changed when x changed only where valid "
                  "is False", torch.where(show, y_other, zero), torch.where(show, y, zero),
                  label="y", rtol=rtol, atol=atol)


def check_causal(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, seed: int = 0,
                 rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Check that ``y[:, :t+1]`` does not depend on ``x[:, t+1:]`` for every ``t``.

    For each ``t < T - 1`` the suffix ``x[:, t+1:]`` is replaced by values drawn from
    ``random.fold_in(random.key(seed), t)``: ``T - 1`` extra calls of ``fn``.

    Args:
        fn: ``x -> y``, e.g. ``lambda x: block.apply(params, state, x, mask=causal_mask(T))[0]``.
        x: ``[b, t, ...]``; floating, integer (token ids) or bool.
        seed: seed of the replacement values.
        rtol, atol: tolerances of the comparison.

    Raises:
        AssertionError: ``"causal: ..."`` naming the position ``t`` whose prefix saw the future,
            the largest difference and its index ``[b, t, ...]``.
        TypeError: ``fn`` not callable, ``x`` not a tensor.
        ValueError: ``x`` below 2-d, ``y`` not ``[b, t, ...]``.
    """
    _check_args("check_causal", fn, x)
    owner = owner_name(fn)
    b_t = (x.shape[0], x.shape[1])
    y = _call("causal", owner, fn, x, b_t, "fn(x)")
    base = random.key(seed)
    positions = torch.arange(b_t[1], device=x.device).reshape((1, -1) + (1,) * (x.ndim - 2))
    for t in range(b_t[1] - 1):
        x_t = torch.where(positions <= t, x, _replacement(x, random.fold_in(base, t)))
        y_t = _call("causal", owner, fn, x_t, b_t, f"fn(x with x[:, {t + 1}:] replaced)")
        compare_trees("causal", owner, f"y[:, :{t + 1}] changed when only x[:, {t + 1}:] changed (position "
                      f"{t} sees the future)", y_t[:, : t + 1], y[:, : t + 1], label="y",
                      rtol=rtol, atol=atol)

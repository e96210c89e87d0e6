"""Ensembles as stacked parameters: ``vmap`` over init keys and over the pure train step.

Twin: ``torch.func.stack_module_state`` + ``vmap(functional_call)``; here every member's
params, state, optimizer state, step and loss scale are one stacked :class:`TrainState`
(leading axis ``n``) and one compiled step trains them all.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from .. import random, tree
from .._checks import describe
from ..amp import DynamicLossScale, Policy
from ..typing import Block, Key, Params, State
from .compile import compiled, no_programs, require_compiled
from .state import TrainState
from .step import build_train_step
from .step_checks import check_batch

__all__ = ["ensemble_init", "ensemble_train_state", "make_ensemble_train_step"]


def _keys(key: Key, n: int, fn: str) -> Key:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"deepfn.train.{fn}: n must be a positive int; got {n!r}")
    return random.split(key, n)


def _materialise(x: Any) -> Any:
    # vmap expands outputs that do not depend on the key (ones, zeros) with stride 0;
    # give every member its own memory.
    return tree.map(lambda t: t.contiguous() if isinstance(t, torch.Tensor) else t, x)


def ensemble_init(model: Block, key: Key, n: int) -> tuple[Params, State]:
    """``n`` members initialised from ``random.split(key, n)``: leaves ``[n, ...]``.

    Member ``i`` equals ``model.init(random.split(key, n)[i])``.
    """
    keys = _keys(key, n, "ensemble_init")
    return _materialise(torch.func.vmap(model.init)(keys))


def ensemble_train_state(model: Block, optimizer: Any, key: Key, n: int, *, policy: Policy | None = None,
                         loss_scale: DynamicLossScale | None = None) -> TrainState:
    """A stacked :class:`TrainState` of ``n`` members; member ``i`` equals
    ``TrainState.create(model, optimizer, random.split(key, n)[i], ...)``."""
    keys = _keys(key, n, "ensemble_train_state")
    create = lambda k: TrainState.create(model, optimizer, k, policy=policy, loss_scale=loss_scale)  # noqa: E731
    return _materialise(torch.func.vmap(create)(keys))


def make_ensemble_train_step(model: Block, loss_fn: Callable, optimizer: Any, *, policy: Policy | None = None,
                             accumulation_steps: int = 1, clip_norm: float | None = None,
                             shared_batch: bool = True, compile: bool = True,
                             compile_cache: str | os.PathLike | None = None) -> Callable:
    """One update of every member: ``vmap`` of the pure train step over stacked states.

    Returns ``step(train_state, batch, keys) -> (train_state, metrics)`` where
    ``train_state`` is stacked (e.g. from :func:`ensemble_train_state`), ``keys`` is
    ``int64 [n, 2]`` (one per member), ``batch`` is shared by all members
    (``shared_batch=True``) or stacked ``[n, b, ...]``; metrics are ``[n]``. Member ``i``
    after the step equals :func:`make_train_step`'s step of member ``i`` alone with
    ``keys[i]``. Same options as :func:`~deepfn.train.make_train_step` (``compile_cache``
    included: the vmapped step saved and loaded by later processes).
    """
    fn = "deepfn.train.make_ensemble_train_step"
    require_compiled(fn, compile_cache, compile)
    pure = build_train_step(model, loss_fn, optimizer, policy=policy,
                            accumulation_steps=accumulation_steps, clip_norm=clip_norm)
    batched = torch.func.vmap(pure, in_dims=(0, None if shared_batch else 0, 0))
    run = compiled(batched, compile_cache, f"{fn}: step") if compile else batched

    def step(train_state: TrainState, batch: Any, keys: Key):
        where = f"{fn}: step"
        if not isinstance(train_state, TrainState):
            raise TypeError(f"{where} needs a stacked TrainState; got {type(train_state).__name__}")
        n = train_state.step.shape[0] if train_state.step.ndim == 1 else None
        if n is None:
            raise ValueError(f"{where}: train_state must be stacked (step [n]); got step {describe(train_state.step)}")
        if not isinstance(keys, torch.Tensor) or keys.dtype != torch.int64 or tuple(keys.shape) != (n, 2):
            raise ValueError(f"{where}: keys must be int64 [{n}, 2] (one per member, random.split(key, {n})); "
                             f"got {describe(keys)}")
        check_batch(where, batch if shared_batch else tree.map(lambda t: t[0], tuple(batch)), accumulation_steps)
        return run(train_state, tuple(batch), keys)

    step.compiled_programs = getattr(run, "compiled_programs", no_programs)   # fit's compile events
    return step

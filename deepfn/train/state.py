"""The training state: one pytree carrying everything a step reads and writes."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from .. import tree
from ..amp import DynamicLossScale, NoOpLossScale, Policy
from ..typing import Block, Key, Params, PyTree, State

__all__ = ["TrainState"]


@dataclass(frozen=True)
class TrainState:
    """Parameters, block state, optimizer state, step counter and loss scale.

    A pytree (children derived from the dataclass fields), so it flows through
    ``torch.compile``, ``vmap`` (ensembles) and :mod:`deepfn.checkpoint` unchanged.

    Args:
        params: the model's parameters (stored in the policy's ``param_dtype``).
        state: the model's state (e.g. BatchNorm running statistics), ``{}`` if none.
        opt_state: ``optimizer.init(params)``.
        step: number of steps taken; an int is stored as a 0-d ``int64`` tensor so that it
            never becomes a Dynamo-guarded constant (one compile for all steps).
        loss_scale: ``None`` (no loss scaling) or a :class:`~deepfn.amp.DynamicLossScale`
            that each step carries forward.
    """

    params: Params
    state: State
    opt_state: PyTree
    step: Any = 0
    loss_scale: DynamicLossScale | NoOpLossScale | None = None

    def __post_init__(self) -> None:
        if isinstance(self.step, int) and not isinstance(self.step, bool):
            object.__setattr__(self, "step", torch.tensor(self.step, dtype=torch.int64))
        if self.loss_scale is not None and not isinstance(self.loss_scale, (DynamicLossScale, NoOpLossScale)):
            raise TypeError(f"TrainState: loss_scale must be None or an amp.DynamicLossScale; "
                            f"got {type(self.loss_scale).__name__}")

    @classmethod
    def create(cls, model: Block, optimizer: Any, key: Key, *, policy: Policy | None = None,
               loss_scale: DynamicLossScale | None = None) -> TrainState:
        """``model.init(key)``, params cast to ``policy.param_dtype``, ``optimizer.init(params)``."""
        params, state = model.init(key)
        if policy is not None:
            params = policy.cast_to_param(params)
        return cls(params, state, optimizer.init(params), 0, loss_scale)

    def replace(self, **changes: Any) -> TrainState:
        return replace(self, **changes)


tree.register_dataclass(TrainState)

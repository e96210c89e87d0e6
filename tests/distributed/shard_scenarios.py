"""Sharded training scenarios shared by the sharded worker and its single-process references.

Each scenario trains a tiny model for a few steps on a global batch of ``GLOBAL_BATCH`` rows;
in a sharded run every rank takes its ``shard_indices`` share of each step's batch. Leaf
sizes are chosen so that some do not divide by 2 or 4 (the padded chunks are exercised).
"""

from __future__ import annotations

import torch

from deepfn import distributed, losses, models, nn, optim, random
from deepfn.amp import DynamicLossScale, Policy
from deepfn.train import TrainState, make_train_step

GLOBAL_BATCH, IN, OUT, SEQ, D_MODEL, STEPS = 16, 7, 3, 5, 12, 3

MLP = models.MLP(IN, [10, 6], OUT, activation="tanh")
LAYER = nn.TransformerEncoderLayer(D_MODEL, 2, 20, dropout=0.0)
BF16 = Policy.from_string("params=float32,compute=bfloat16,output=float32")

SCENARIOS = {
    # name: (model, optimizer, make_train_step options)
    "sgd_momentum": (MLP, optim.sgd(0.1, momentum=0.9), {}),
    "adamw_accum_scaled_clipped": (MLP, optim.adamw(1e-2), dict(
        accumulation_steps=2, loss_scale=DynamicLossScale(init_scale=2.0**10), clip_norm=0.5)),
    "adam_decay_donated": (MLP, optim.adam(1e-2, weight_decay=0.01), dict(donate=True, clip_norm=0.3)),
    "bf16_policy": (MLP, optim.adamw(1e-2), dict(policy=BF16)),
    # SGD, not Adam: the key bias of attention has a zero gradient up to rounding, which Adam
    # would turn into steps of size lr (any two summation orders then differ by ~lr).
    "transformer_layer": (LAYER, optim.sgd(0.05, momentum=0.9), dict(accumulation_steps=2, clip_norm=1.0)),
}


def data(name: str, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    k_x, k_y = random.split(random.fold_in(random.key(7), step))
    if name == "transformer_layer":
        return (random.normal(k_x, (GLOBAL_BATCH, SEQ, D_MODEL)),
                random.randint(k_y, (GLOBAL_BATCH, SEQ), 0, D_MODEL))
    return random.normal(k_x, (GLOBAL_BATCH, IN)), random.randint(k_y, (GLOBAL_BATCH,), 0, OUT)


def start(name: str) -> TrainState:
    model, opt, options = SCENARIOS[name]
    return TrainState.create(model, opt, random.key(3), policy=None)


def train(name: str, ts: TrainState, steps: range, *, sharding: str | None = None, rank: int = 0,
          world_size: int = 1, all_reduce=None, compile: bool = False) -> tuple[TrainState, torch.Tensor]:
    """``ts`` after ``steps`` (a range of global step numbers), and each step's loss."""
    model, opt, options = SCENARIOS[name]
    step = make_train_step(model, losses.cross_entropy, opt, sharding=sharding, all_reduce=all_reduce,
                           compile=compile, **options)
    step_losses = []
    for s in steps:
        x, y = data(name, s)
        idx = distributed.shard_indices(random.key(11), s, GLOBAL_BATCH, rank, world_size)
        ts, metrics = step(ts, (x[idx], y[idx]), None)
        step_losses.append(metrics["loss"])
    return ts, torch.stack(step_losses)


def reference(name: str, steps: int = STEPS) -> tuple[TrainState, torch.Tensor]:
    """One process on the whole batch."""
    return train(name, start(name), range(steps))

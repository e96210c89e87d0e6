"""Training scenarios shared by the 2-process worker and the single-process reference.

Each scenario trains an MLP for a few steps on a global batch of ``GLOBAL_BATCH`` rows.
In the data-parallel run every rank trains on its ``shard_indices`` share of each step's
batch and all-reduces gradients; the reference trains one process on the whole batch.
"""

from __future__ import annotations

import torch

from deepfn import distributed, losses, models, optim, random
from deepfn.amp import DynamicLossScale
from deepfn.train import TrainState, make_train_step

GLOBAL_BATCH, IN, OUT, STEPS = 16, 8, 4, 4


def data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    k_x, k_y = random.split(random.fold_in(random.key(7), step))
    return random.normal(k_x, (GLOBAL_BATCH, IN)), random.randint(k_y, (GLOBAL_BATCH,), 0, OUT)


SCENARIOS = {
    # name: (model, optimizer, make_train_step options)
    "sgd_momentum": (models.MLP(IN, [16, 16], OUT), optim.sgd(0.1, momentum=0.9), {}),
    "adamw_accum_scaled_clipped": (
        models.MLP(IN, [16], OUT, activation="tanh"), optim.adamw(1e-2),
        dict(accumulation_steps=2, loss_scale=DynamicLossScale(init_scale=2.0**10), clip_norm=0.5)),
}


def train(name: str, *, rank: int = 0, world_size: int = 1, all_reduce=None, compile: bool = False) -> dict:
    """Final params and per-step losses of scenario ``name`` on this rank's shards."""
    model, opt, options = SCENARIOS[name]
    ts = TrainState.create(model, opt, random.key(3))
    step = make_train_step(model, losses.cross_entropy, opt, all_reduce=all_reduce, compile=compile, **options)
    step_losses = []
    for s in range(STEPS):
        x, y = data(s)
        idx = distributed.shard_indices(random.key(11), s, GLOBAL_BATCH, rank, world_size)
        ts, metrics = step(ts, (x[idx], y[idx]), None)
        step_losses.append(metrics["loss"])
    return {"params": ts.params, "losses": torch.stack(step_losses)}

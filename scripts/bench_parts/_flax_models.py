"""Flax (linen) + Optax contenders for the MLP workloads, jitted with ``jax.jit``.

Imported only when ``import jax, flax, optax`` works (the optional ``bench`` extra). The
network is the seed's MLP layer order; its weights are copied from the torch twin (which
holds deepfn's initial weights), so all contenders start from one point.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch

# Match torch's thread count: XLA ignores OMP_NUM_THREADS and uses every core by default.
# (Only effective before jax starts its CPU backend, i.e. on the first import in a process.)
if torch.get_num_threads() == 1 and "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import linen as nn  # noqa: E402


class FlaxMLP(nn.Module):
    hidden_dims: Sequence[int]
    output_dim: int
    dropout_rate: float = 0.0
    batch_norm: bool = False

    @nn.compact
    def __call__(self, x, train: bool):
        for width in self.hidden_dims:
            x = nn.Dense(width)(x)
            if self.batch_norm:
                # flax momentum is the weight of the old statistics: torch's 0.1 is flax's 0.9.
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
            x = nn.relu(x)
            if self.dropout_rate > 0:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.output_dim)(x)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def variables_from_sequential(seq: torch.nn.Sequential) -> dict:
    """Flax variables (``params``, ``batch_stats``) holding the weights of the torch twin."""
    params, stats = {}, {}
    n_dense = n_bn = 0
    for layer in seq:
        if isinstance(layer, torch.nn.Linear):
            params[f"Dense_{n_dense}"] = {"kernel": jnp.asarray(_np(layer.weight.T)), "bias": jnp.asarray(_np(layer.bias))}
            n_dense += 1
        elif isinstance(layer, torch.nn.BatchNorm1d):
            name = f"BatchNorm_{n_bn}"
            params[name] = {"scale": jnp.asarray(_np(layer.weight)), "bias": jnp.asarray(_np(layer.bias))}
            stats[name] = {"mean": jnp.asarray(_np(layer.running_mean)), "var": jnp.asarray(_np(layer.running_var))}
            n_bn += 1
    return {"params": params, "batch_stats": stats}


def make_runner(seq: torch.nn.Sequential, hidden_dims: Sequence[int], output_dim: int, dropout_rate: float,
                batch_norm: bool, tx: optax.GradientTransformation, x: torch.Tensor,
                y: torch.Tensor) -> Callable[[], object]:
    """A ``one_step()`` closure: one jitted Flax+Optax update on the fixed batch; blocks until done."""
    model = FlaxMLP(tuple(hidden_dims), output_dim, dropout_rate, batch_norm)
    variables = variables_from_sequential(seq)
    xb, yb = jnp.asarray(_np(x)), jnp.asarray(_np(y))

    @jax.jit
    def step(params, stats, opt_state, rng):
        rng, k_drop = jax.random.split(rng)

        def loss_fn(p):
            logits, updated = model.apply({"params": p, "batch_stats": stats}, xb, train=True,
                                          rngs={"dropout": k_drop}, mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
            return loss, updated["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, rng, loss

    carry = [variables["params"], variables["batch_stats"], tx.init(variables["params"]), jax.random.PRNGKey(0)]

    def one_step():
        *new, loss = step(*carry)
        carry[:] = new
        return loss.block_until_ready()

    return one_step

"""Flax (linen) + Optax contenders for the workloads, jitted with ``jax.jit``.

Imported only when ``import jax, flax, optax`` works (the optional ``bench`` extra).

- ``FlaxMLP``: the seed's MLP layer order; its weights are copied from the torch twin
  (which holds deepfn's initial weights), so all contenders start from one point.
- ``FlaxSEResNet``: the ``AdvancedCNN`` twin (basic blocks, squeeze-excitation after the
  last stage, dropout, classifier) in Flax's NHWC layout; inputs are transposed once,
  outside the timed step.
- ``FlaxSeq2Seq``: the encoder-decoder Transformer (shared scaled embedding, sinusoidal
  positions, post-LN layers, padding and causal masks, untied output layer).

The CNN and Transformer start from Flax's own initialisation (same shapes, other values):
a step's time does not depend on the values.
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


class _BasicBlock(nn.Module):
    width: int
    stride: int

    @nn.compact
    def __call__(self, x, train: bool):
        norm = dict(use_running_average=not train, momentum=0.9, epsilon=1e-5)
        y = nn.Conv(self.width, (3, 3), (self.stride, self.stride), padding=1, use_bias=False)(x)
        y = nn.relu(nn.BatchNorm(**norm)(y))
        y = nn.Conv(self.width, (3, 3), padding=1, use_bias=False)(y)
        y = nn.BatchNorm(**norm)(y)
        if self.stride != 1 or x.shape[-1] != self.width:
            x = nn.Conv(self.width, (1, 1), (self.stride, self.stride), use_bias=False)(x)
            x = nn.BatchNorm(**norm)(x)
        return nn.relu(x + y)


class FlaxSEResNet(nn.Module):
    base: int
    num_blocks: Sequence[int]
    num_classes: int
    imagenet_stem: bool
    dropout_rate: float

    @nn.compact
    def __call__(self, x, train: bool):
        """``x [B, H, W, C]`` (NHWC) -> logits ``[B, num_classes]``."""
        kernel, stride, pad = (7, 2, 3) if self.imagenet_stem else (3, 1, 1)
        x = nn.Conv(self.base, (kernel, kernel), (stride, stride), padding=pad, use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x))
        if self.imagenet_stem:
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for i, count in enumerate(self.num_blocks):
            for j in range(count):
                x = _BasicBlock(self.base * 2 ** i, 2 if (i > 0 and j == 0) else 1)(x, train)
        channels = x.shape[-1]
        gate = nn.Dense(channels // 16, use_bias=False)(x.mean(axis=(1, 2)))
        gate = nn.sigmoid(nn.Dense(channels, use_bias=False)(nn.relu(gate)))
        x = (x * gate[:, None, None, :]).mean(axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


def _sinusoids(length: int, d_model: int) -> np.ndarray:
    position = np.arange(length, dtype=np.float32)[:, None]
    rate = np.exp(np.arange(0, d_model, 2, dtype=np.float32) * (-np.log(10000.0) / d_model))
    table = np.zeros((length, d_model), np.float32)
    table[:, 0::2], table[:, 1::2] = np.sin(position * rate), np.cos(position * rate)
    return table


class _Feedforward(nn.Module):
    d_model: int
    d_ff: int
    dropout_rate: float

    @nn.compact
    def __call__(self, x, train: bool):
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(nn.Dense(self.d_ff)(x)))
        return nn.Dense(self.d_model)(y)


class _Layer(nn.Module):
    """A post-LN encoder layer, or a decoder layer when called with ``memory``."""
    d_model: int
    n_heads: int
    d_ff: int
    dropout_rate: float

    @nn.compact
    def __call__(self, x, mask, train: bool, memory=None, memory_mask=None):
        drop = nn.Dropout(self.dropout_rate, deterministic=not train)
        attend = dict(num_heads=self.n_heads, qkv_features=self.d_model, dropout_rate=self.dropout_rate,
                      deterministic=not train)
        x = nn.LayerNorm(epsilon=1e-5)(x + drop(nn.MultiHeadDotProductAttention(**attend)(x, x, mask=mask)))
        if memory is not None:
            cross = nn.MultiHeadDotProductAttention(**attend)(x, memory, mask=memory_mask)
            x = nn.LayerNorm(epsilon=1e-5)(x + drop(cross))
        ff = _Feedforward(self.d_model, self.d_ff, self.dropout_rate)(x, train)
        return nn.LayerNorm(epsilon=1e-5)(x + drop(ff))


class FlaxSeq2Seq(nn.Module):
    vocab_size: int
    d_model: int
    n_heads: int
    n_layers: int
    d_ff: int
    dropout_rate: float
    max_len: int
    pad: int = 0

    @nn.compact
    def __call__(self, src, tgt, train: bool):
        """``src [B, S]``, ``tgt [B, T]`` int32 -> logits ``[B, T, vocab_size]``."""
        embed = nn.Embed(self.vocab_size, self.d_model)
        positions = jnp.asarray(_sinusoids(self.max_len, self.d_model))
        drop = nn.Dropout(self.dropout_rate, deterministic=not train)

        def embedded(tokens):
            return drop(embed(tokens) * np.sqrt(self.d_model) + positions[: tokens.shape[1]])

        src_keep, tgt_keep = src != self.pad, tgt != self.pad
        enc_mask = nn.make_attention_mask(src_keep, src_keep)
        dec_mask = nn.combine_masks(nn.make_attention_mask(tgt_keep, tgt_keep), nn.make_causal_mask(tgt))
        cross_mask = nn.make_attention_mask(tgt_keep, src_keep)
        layer = dict(d_model=self.d_model, n_heads=self.n_heads, d_ff=self.d_ff, dropout_rate=self.dropout_rate)
        memory = embedded(src)
        for _ in range(self.n_layers):
            memory = _Layer(**layer)(memory, enc_mask, train)
        y = embedded(tgt)
        for _ in range(self.n_layers):
            y = _Layer(**layer)(y, dec_mask, train, memory, cross_mask)
        return nn.Dense(self.vocab_size)(y)


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


def mlp_runner(seq: torch.nn.Sequential, hidden_dims: Sequence[int], output_dim: int, dropout_rate: float,
               batch_norm: bool, tx: optax.GradientTransformation, x: torch.Tensor,
               y: torch.Tensor) -> Callable[[], object]:
    """``make_runner`` for the MLP, with the torch twin's weights."""
    model = FlaxMLP(tuple(hidden_dims), output_dim, dropout_rate, batch_norm)
    return make_runner(model, variables_from_sequential(seq), tx, (jnp.asarray(_np(x)),), jnp.asarray(_np(y)))


def cnn_runner(base: int, num_blocks: Sequence[int], num_classes: int, imagenet_stem: bool, dropout_rate: float,
               tx: optax.GradientTransformation, x: torch.Tensor, y: torch.Tensor) -> Callable[[], object]:
    """``make_runner`` for the SE-ResNet; ``x [B, C, H, W]`` is transposed to NHWC here, once."""
    model = FlaxSEResNet(base, tuple(num_blocks), num_classes, imagenet_stem, dropout_rate)
    xb = jnp.asarray(_np(x.permute(0, 2, 3, 1).contiguous()))
    variables = model.init(jax.random.PRNGKey(0), xb, train=False)
    return make_runner(model, variables, tx, (xb,), jnp.asarray(_np(y)))


def transformer_runner(vocab_size: int, d_model: int, n_heads: int, n_layers: int, d_ff: int, dropout_rate: float,
                       max_len: int, tx: optax.GradientTransformation, src: torch.Tensor, tgt: torch.Tensor,
                       labels: torch.Tensor, label_smoothing: float) -> Callable[[], object]:
    """``make_runner`` for the encoder-decoder Transformer (token ids as int32)."""
    model = FlaxSeq2Seq(vocab_size, d_model, n_heads, n_layers, d_ff, dropout_rate, max_len)
    inputs = (jnp.asarray(_np(src.int())), jnp.asarray(_np(tgt.int())))
    variables = model.init(jax.random.PRNGKey(0), *inputs, train=False)
    return make_runner(model, variables, tx, inputs, jnp.asarray(_np(labels.int())), label_smoothing)


def make_runner(model: nn.Module, variables: dict, tx: optax.GradientTransformation, inputs: tuple,
                labels, label_smoothing: float = 0.0) -> Callable[[], object]:
    """A ``one_step()`` closure: one jitted Flax+Optax update on the fixed batch; blocks until done.

    ``model.apply(variables, *inputs, train=True)`` gives logits ``[..., C]``; the loss is the
    mean softmax cross-entropy against integer ``labels [...]`` with label smoothing.
    """
    stats0 = variables.get("batch_stats", {})

    @jax.jit
    def step(params, stats, opt_state, rng):
        rng, k_drop = jax.random.split(rng)

        def loss_fn(p):
            logits, updated = model.apply({"params": p, "batch_stats": stats}, *inputs, train=True,
                                          rngs={"dropout": k_drop}, mutable=["batch_stats"])
            classes = logits.shape[-1]
            targets = optax.smooth_labels(jax.nn.one_hot(labels, classes), label_smoothing)
            loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()
            return loss, updated.get("batch_stats", {})

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, rng, loss

    carry = [variables["params"], stats0, tx.init(variables["params"]), jax.random.PRNGKey(0)]

    def one_step():
        *new, loss = step(*carry)
        carry[:] = new
        return loss.block_until_ready()

    return one_step

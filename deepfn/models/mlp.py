"""Multi-layer perceptron with optional batch norm and dropout. Twin: the seed's ``MLP``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .. import tree
from .._checks import (
    check_dim,
    check_floating,
    check_keys,
    check_positive,
    check_probability,
    check_rank,
    require_key,
)
from ..nn import activations, initializers
from ..nn.batch_norm import BatchNorm
from ..nn.block import split_key
from ..nn.dense import Dense
from ..nn.dropout import dropout
from ..typing import Key, Params, State, Tensor

__all__ = ["MLP", "num_parameters"]


@dataclass(frozen=True)
class MLP:
    """``[Dense, BatchNorm?, activation, Dropout?] x len(hidden_dims), Dense``.

    Params and state live under ``network.<i>``, where ``i`` is the layer's index in the
    seed's ``nn.Sequential`` (activations and dropout take an index but own nothing), so
    ``tree.flatten(params) | tree.flatten(state)`` has the seed ``MLP``'s ``state_dict``
    names: ``network.0.weight``, ``network.1.running_mean``, ...

    Args:
        input_dim: features of ``x``.
        hidden_dims: widths of the hidden layers (a list is stored as a tuple).
        output_dim: number of logits.
        activation: a registered name (``deepfn.nn.activations``) or a callable.
        dropout_rate: probability of zeroing a hidden unit in training; 0 adds no dropout.
        batch_norm: add ``BatchNorm`` (twin ``BatchNorm1d``) after each hidden ``Dense``.
        weight_init: ``"xavier"`` (xavier-uniform), ``"he"`` (kaiming-normal, fan-in,
            relu), ``"normal"`` (std 0.02), another name of ``deepfn.nn.initializers.BY_NAME``
            or a callable ``(key, shape, dtype)``; biases start at zero.

    Twin: the seed's ``MLP`` (names ``network.<i>.*``), or an ``nn.Sequential`` of the same
    layers through the rename table in ``deepfn.interop.seed_names``. Divergence: an unknown
    activation or ``weight_init`` raises here, where the seed silently skips it.
    """

    input_dim: int
    hidden_dims: Sequence[int]
    output_dim: int
    activation: str | Callable[[Tensor], Tensor] = "relu"
    dropout_rate: float = 0.0
    batch_norm: bool = False
    weight_init: str | Callable = "xavier"

    def __post_init__(self) -> None:
        if isinstance(self.hidden_dims, (str, bytes)) or not isinstance(self.hidden_dims, Sequence):
            raise ValueError(f"MLP: hidden_dims must be a sequence of positive ints; got {self.hidden_dims!r}")
        # A tuple keeps the frozen config hashable (torch.compile guards on it).
        object.__setattr__(self, "hidden_dims", tuple(self.hidden_dims))
        check_positive(self, input_dim=self.input_dim, output_dim=self.output_dim,
                       **{f"hidden_dims[{i}]": h for i, h in enumerate(self.hidden_dims)})
        check_probability(self, "dropout_rate", self.dropout_rate)
        if not callable(self.activation) and self.activation not in activations.names():
            raise ValueError(f"MLP: activation must be one of {activations.names()} or a callable "
                             f"(add one with deepfn.nn.activations.register); got {self.activation!r}")
        if not callable(self.weight_init) and self.weight_init not in initializers.BY_NAME:
            raise ValueError(f"MLP: weight_init must be one of {sorted(initializers.BY_NAME)} or a "
                             f"callable; got {self.weight_init!r}")

    def layers(self) -> list[tuple[str, object]]:
        """``(index, layer)`` in the seed's order; ``layer`` is a block, ``"act"`` or ``"drop"``."""
        out: list[tuple[str, object]] = []
        prev = self.input_dim
        for width in self.hidden_dims:
            out.append((str(len(out)), Dense(prev, width)))
            if self.batch_norm:
                out.append((str(len(out)), BatchNorm(width)))
            out.append((str(len(out)), "act"))
            if self.dropout_rate > 0:
                out.append((str(len(out)), "drop"))
            prev = width
        out.append((str(len(out)), Dense(prev, self.output_dim)))
        return out

    def init(self, key: Key) -> tuple[Params, State]:
        weight_init = initializers.get(self.weight_init)
        blocks = [(name, layer) for name, layer in self.layers() if not isinstance(layer, str)]
        params: Params = {}
        state: State = {}
        for (name, layer), k in zip(blocks, split_key(key, len(blocks)), strict=True):
            if isinstance(layer, Dense):
                shape = (layer.out_features, layer.in_features)
                params[name] = {"weight": weight_init(k, shape, torch.float32),
                                "bias": initializers.zeros(k, (layer.out_features,))}
            else:
                params[name], state[name] = layer.init(k)
        return {"network": params}, ({"network": state} if state else {})

    def apply(self, params: Params, state: State, x: Tensor, *, key: Key | None = None,
              train: bool = False) -> tuple[Tensor, State]:
        """``x [b, input_dim]`` floating -> logits ``[b, output_dim]`` of x's dtype.

        ``train=True`` uses batch statistics (returning updated running statistics in the
        new state) and, when ``dropout_rate > 0``, needs ``key``.
        """
        check_floating(self, "x", x)
        check_rank(self, "x", x, 2, layout="[b, input_dim]")
        check_dim(self, "x", x, axis=-1, size=self.input_dim, hyper="input_dim")
        use_dropout = train and self.dropout_rate > 0
        if use_dropout:
            require_key(self, key)
        act = activations.get(self.activation)
        drop_keys = iter(split_key(key if use_dropout else None, max(1, len(self.hidden_dims))))
        layers = self.layers()
        check_keys(self, params, ("network",))
        check_keys(self, params["network"], [n for n, layer in layers if not isinstance(layer, str)],
                   name="params['network']")
        norms = [n for n, layer in layers if isinstance(layer, BatchNorm)]   # none without hidden layers
        check_keys(self, state, ("network",) if norms else (), name="state")
        if norms:
            check_keys(self, state["network"], norms, name="state['network']")
        net_params = params["network"]
        net_state = state.get("network", {})
        new_state: State = {}
        for name, layer in layers:
            if layer == "act":
                x = act(x)
            elif layer == "drop":
                x = dropout(x, self.dropout_rate, next(drop_keys), train, owner=self)
            elif isinstance(layer, BatchNorm):
                x, new_state[name] = layer.apply(net_params[name], net_state[name], x, train=train)
            else:
                x, _ = layer.apply(net_params[name], {}, x)
        if not train or not new_state:
            return x, state
        return x, {**state, "network": {**net_state, **new_state}}

    def num_parameters(self) -> int:
        """Trainable element count, as the seed's ``get_num_parameters`` (BN affine included)."""
        total = 0
        for _, layer in self.layers():
            if isinstance(layer, Dense):
                total += layer.out_features * (layer.in_features + 1)
            elif isinstance(layer, BatchNorm):
                total += 2 * layer.num_features
        return total


def num_parameters(params: Params) -> int:
    """Total number of elements in a params tree (``sum(p.numel() for p in module.parameters())``)."""
    return tree.size(params)

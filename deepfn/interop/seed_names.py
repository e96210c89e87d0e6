"""Rename table: deepfn ``MLP`` <-> a plain ``nn.Sequential`` of the seed's layer order.

deepfn's ``MLP`` keeps the seed ``MLP``'s names (``network.<i>.weight``), so the seed class
converts without a table. A bare ``nn.Sequential(Linear, BatchNorm1d?, act, Dropout?, ...,
Linear)`` has the same layers without the ``network.`` prefix (``0.weight``); this table
strips it, after checking that every layer sits at the index deepfn expects.
"""

from __future__ import annotations

from typing import Any

import torch

from .._checks import describe

__all__ = ["matches_sequential_mlp", "sequential_mlp"]


def matches_sequential_mlp(block: Any, module: torch.nn.Module) -> bool:
    from ..models.mlp import MLP

    return isinstance(block, MLP) and isinstance(module, torch.nn.Sequential)


def sequential_mlp(block: Any, module: torch.nn.Module) -> Any:
    """``network.<i>.<leaf>`` -> ``<i>.<leaf>``; raises if the Sequential's layers differ."""
    from ..nn.batch_norm import BatchNorm
    from ..nn.dense import Dense

    where = f"interop: {block!r} vs nn.Sequential"
    layers = block.layers()
    if len(module) != len(layers):
        raise ValueError(f"{where}: expected {len(layers)} layers in the seed's order; got {len(module)}")
    for (index, layer), got in zip(layers, module, strict=True):
        if isinstance(layer, Dense):
            want: type = torch.nn.Linear
        elif isinstance(layer, BatchNorm):
            want = torch.nn.BatchNorm1d
        else:
            continue  # activations and dropout own no weights
        if not isinstance(got, want):
            raise ValueError(f"{where}: layer {index} must be torch.nn.{want.__name__}; got {type(got).__name__}")
        if isinstance(got, torch.nn.Linear) and tuple(got.weight.shape) != (layer.out_features, layer.in_features):
            raise ValueError(f"{where}: layer {index} weight must be [{layer.out_features}, "
                             f"{layer.in_features}]; got {describe(got.weight)}")

    def rename(name: str) -> str:
        prefix, _, rest = name.partition(".")
        if prefix != "network" or not rest:
            raise ValueError(f"{where}: unexpected deepfn name {name!r} (expected network.<i>.*)")
        return rest

    return rename

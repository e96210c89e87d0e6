"""Generic state_dict <-> (params, state) conversion with asserted names and shapes."""

from __future__ import annotations

from typing import Any

import torch

from .. import random, tree
from .._checks import describe
from ..typing import Params, State
from . import gpt2, renames

__all__ = ["from_torch", "to_torch"]

Shapes = dict[str, torch.Size]
# Keyed by repr (the frozen config; blocks with list fields are unhashable). Initialising a
# large model only to read its names and shapes costs seconds, so it happens once per config.
# The cache holds shapes, never values, so it cannot change a result.
_SHAPES_BY_CONFIG: dict[str, tuple[Shapes, Shapes]] = {}


def _expected(block: Any) -> tuple[Shapes, Shapes]:
    """Flat names -> shapes of the block's params and state."""
    config = repr(block)
    if config not in _SHAPES_BY_CONFIG:
        params, state = block.init(random.key(0))
        _SHAPES_BY_CONFIG[config] = (
            {n: t.shape for n, t in tree.flatten(params).items()},
            {n: t.shape for n, t in tree.flatten(state).items()},
        )
    return _SHAPES_BY_CONFIG[config]


def _torch_names(block: Any, module: torch.nn.Module, names: list[str]) -> dict[str, str]:
    rename = renames.find(block, module)
    return {n: (rename(n) if rename else n) for n in names}


def from_torch(block: Any, module: torch.nn.Module) -> tuple[Params, State]:
    """Copy ``module``'s weights and buffers into deepfn ``(params, state)`` for ``block``.

    Tensors keep the module's dtypes and device (an fp64 module gives fp64 params).

    Raises:
        ValueError: a name is missing from, or left over in, the module's ``state_dict``,
            or a shape differs; the message lists the names on both sides.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"interop.from_torch: module must be a torch.nn.Module; got {type(module).__name__}")
    if gpt2.matches_gpt2(block, module):   # transposed Conv1D weights: its own table
        return gpt2.from_torch(block, module)
    exp_params, exp_state = _expected(block)
    sd = module.state_dict()
    mapping = _torch_names(block, module, [*exp_params, *exp_state])
    missing = [t for t in mapping.values() if t not in sd]
    extra = sorted(set(sd) - set(mapping.values()))
    if missing or extra:
        raise ValueError(
            f"interop.from_torch({block!r}, {type(module).__name__}): state_dict names do not match;"
            f" missing in module: {missing}; not used from module: {extra}"
        )

    def take(expected: Shapes) -> dict[str, Any]:
        out = {}
        for name, ref in expected.items():
            src = sd[mapping[name]]
            if tuple(src.shape) != tuple(ref):
                raise ValueError(
                    f"interop.from_torch({block!r}): {mapping[name]} has shape {list(src.shape)}, "
                    f"expected {list(ref)} for {name}"
                )
            # Integer buffers (num_batches_tracked) keep int64; floats keep the module's dtype.
            out[name] = src.detach().clone()
        return tree.unflatten(out)

    return take(exp_params), take(exp_state)


def to_torch(block: Any, params: Params, state: State, module: torch.nn.Module) -> torch.nn.Module:
    """Load ``(params, state)`` into ``module`` (in place, strict) and return it."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"interop.to_torch: module must be a torch.nn.Module; got {type(module).__name__}")
    if gpt2.matches_gpt2(block, module):
        return gpt2.to_torch(block, params, state, module)
    flat = {**tree.flatten(params), **tree.flatten(state)}
    exp_params, exp_state = _expected(block)
    expected = {**exp_params, **exp_state}
    if set(flat) != set(expected):
        raise ValueError(
            f"interop.to_torch({block!r}): tree names do not match the block; missing "
            f"{sorted(set(expected) - set(flat))}, unexpected {sorted(set(flat) - set(expected))}"
        )
    mapping = _torch_names(block, module, list(flat))
    sd = module.state_dict()
    new_sd = {}
    for name, value in flat.items():
        target = mapping[name]
        if target not in sd:
            raise ValueError(f"interop.to_torch({block!r}): module has no entry {target!r} for {name}")
        if tuple(sd[target].shape) != tuple(value.shape):
            raise ValueError(
                f"interop.to_torch({block!r}): {name} is {describe(value)} but the module's {target} "
                f"has shape {list(sd[target].shape)}"
            )
        new_sd[target] = value.detach()
    module.load_state_dict(new_sd, strict=True)
    return module

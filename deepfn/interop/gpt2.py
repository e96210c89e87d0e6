"""Conversion: deepfn ``models.GPT`` <-> ``transformers.GPT2LMHeadModel`` (``transformers`` is
imported only when a module of it is given).

The rename table, per layer ``i`` (``Conv1D`` weights are stored ``[in, out]``, deepfn's
``[out, in]`` as ``torch.nn.Linear``: those four are transposed)::

    wte.weight, wpe.weight                  <- transformer.wte.weight, transformer.wpe.weight
    layers.i.norm1.*, layers.i.norm2.*      <- transformer.h.i.ln_1.*, transformer.h.i.ln_2.*
    layers.i.self_attn.in_proj_weight       <- transformer.h.i.attn.c_attn.weight (transposed)
    layers.i.self_attn.in_proj_bias         <- transformer.h.i.attn.c_attn.bias
    layers.i.self_attn.out_proj.*           <- transformer.h.i.attn.c_proj.* (weight transposed)
    layers.i.linear1.*, layers.i.linear2.*  <- transformer.h.i.mlp.c_fc.*, mlp.c_proj.* (weights transposed)
    ln_f.*                                  <- transformer.ln_f.*
    lm_head.weight (untied only)            <- lm_head.weight

``c_attn`` stacks query, key and value columns in that order, as ``in_proj_weight`` stacks
rows. The configurations must agree field by field (a ``ValueError`` names the first
that differs); dropout rates are not compared (conversion copies weights only).
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from .. import tree
from .._checks import describe
from ..typing import Params, State

__all__ = ["matches_gpt2", "from_torch", "to_torch", "torch_names"]

_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_LAYER = {
    "norm1": "ln_1", "norm2": "ln_2", "self_attn.in_proj_weight": "attn.c_attn.weight",
    "self_attn.in_proj_bias": "attn.c_attn.bias", "self_attn.out_proj": "attn.c_proj",
    "linear1": "mlp.c_fc", "linear2": "mlp.c_proj",
}


def matches_gpt2(block: Any, module: torch.nn.Module) -> bool:
    """True for a deepfn ``GPT`` and a ``transformers`` GPT-2 language model."""
    from ..models.gpt import GPT

    # A GPT2LMHeadModel instance means transformers is imported already; never import it here.
    hf = sys.modules.get("transformers.models.gpt2.modeling_gpt2")
    return isinstance(block, GPT) and hf is not None and isinstance(module, hf.GPT2LMHeadModel)


def _hf_name(name: str) -> str:
    """The ``GPT2LMHeadModel`` state_dict name of a deepfn flat param name."""
    if name == "lm_head.weight":
        return name
    if name.startswith("layers."):
        _, i, rest = name.split(".", 2)
        for ours, theirs in _LAYER.items():
            if rest == ours or rest.startswith(ours + "."):
                return f"transformer.h.{i}.{theirs}{rest[len(ours):]}"
        raise ValueError(f"interop.gpt2: no GPT-2 name for {name!r}")
    return f"transformer.{name}"


def torch_names(block: Any) -> dict[str, str]:
    """deepfn flat param name -> ``GPT2LMHeadModel`` state_dict name, for every param of ``block``."""
    return {n: _hf_name(n) for n in _param_names(block)}


def _param_names(block: Any) -> list[str]:
    names = ["wte.weight", "wpe.weight"]
    layer = ["norm1.weight", "norm1.bias", "self_attn.in_proj_weight", "self_attn.in_proj_bias",
             "self_attn.out_proj.weight", "self_attn.out_proj.bias", "linear1.weight", "linear1.bias",
             "linear2.weight", "linear2.bias", "norm2.weight", "norm2.bias"]
    names += [f"layers.{i}.{leaf}" for i in range(block.n_layers) for leaf in layer]
    names += ["ln_f.weight", "ln_f.bias"]
    if not block.tie_embeddings:
        names.append("lm_head.weight")
    return names


def _check_config(block: Any, module: torch.nn.Module, fn: str) -> None:
    c = module.config
    d_ff = block.d_ff or 4 * block.d_model
    pairs = [
        ("vocab_size", block.vocab_size, "vocab_size", c.vocab_size),
        ("max_len", block.max_len, "n_positions", c.n_positions),
        ("d_model", block.d_model, "n_embd", c.n_embd),
        ("n_layers", block.n_layers, "n_layer", c.n_layer),
        ("n_heads", block.n_heads, "n_head", c.n_head),
        ("d_ff", d_ff, "n_inner", c.n_inner or 4 * c.n_embd),
        ("layer_norm_eps", block.layer_norm_eps, "layer_norm_epsilon", c.layer_norm_epsilon),
        ("tie_embeddings", block.tie_embeddings, "tie_word_embeddings", bool(c.tie_word_embeddings)),
    ]
    for ours, mine, theirs, hf in pairs:
        if mine != hf:
            raise ValueError(f"interop.{fn}({block!r}, GPT2LMHeadModel): {ours}={mine!r} but the model's "
                             f"config has {theirs}={hf!r}")
    if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"interop.{fn}: GPT uses GELU with the tanh approximation; the model's config has "
                         f"activation_function={c.activation_function!r} (want 'gelu_new')")
    if not c.scale_attn_weights or c.scale_attn_by_inverse_layer_idx:
        raise ValueError(f"interop.{fn}: GPT scales attention scores by 1/sqrt(head_dim) only; the model's "
                         f"config has scale_attn_weights={c.scale_attn_weights}, "
                         f"scale_attn_by_inverse_layer_idx={c.scale_attn_by_inverse_layer_idx}")


def from_torch(block: Any, module: torch.nn.Module) -> tuple[Params, State]:
    """``(params, {})`` for ``block`` (a ``GPT``) from a ``GPT2LMHeadModel`` of the same config.

    Tensors keep the module's dtype and device.

    Raises:
        ValueError: a config field differs (named), or a state_dict entry is missing or has
            another shape than the config implies.
    """
    _check_config(block, module, "from_torch")
    sd = module.state_dict()
    flat = {}
    for ours, theirs in torch_names(block).items():
        if theirs not in sd:
            raise ValueError(f"interop.from_torch({block!r}): the GPT2LMHeadModel has no {theirs!r} for {ours}")
        value = sd[theirs].detach()
        flat[ours] = (value.t() if theirs.endswith(_TRANSPOSED) else value).clone()
    return tree.unflatten(flat), {}


def to_torch(block: Any, params: Params, state: State, module: torch.nn.Module) -> torch.nn.Module:
    """Load ``params`` into ``module`` (a ``GPT2LMHeadModel`` of ``block``'s config), in place; return it.

    A tied model's ``lm_head.weight`` is its ``wte.weight``, loaded once.
    """
    _check_config(block, module, "to_torch")
    names = torch_names(block)
    flat = tree.flatten(params)
    if set(flat) != set(names) or state:
        raise ValueError(f"interop.to_torch({block!r}): params names do not match the block; missing "
                         f"{sorted(set(names) - set(flat))}, unexpected {sorted(set(flat) - set(names))}; "
                         f"state must be empty, got keys {sorted(state)}")
    sd = module.state_dict()
    new_sd = {}
    for ours, theirs in names.items():
        value = flat[ours].detach()
        value = value.t() if theirs.endswith(_TRANSPOSED) else value
        if tuple(value.shape) != tuple(sd[theirs].shape):
            raise ValueError(f"interop.to_torch({block!r}): {ours} is {describe(flat[ours])} but the model's "
                             f"{theirs} has shape {list(sd[theirs].shape)}")
        new_sd[theirs] = value.contiguous()
    if block.tie_embeddings and "lm_head.weight" in sd:
        new_sd["lm_head.weight"] = new_sd["transformer.wte.weight"]
    module.load_state_dict(new_sd, strict=True)
    return module

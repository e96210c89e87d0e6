"""Every public block and model of ``deepfn.nn`` / ``deepfn.models`` in one tiny configuration
(Haiku's descriptors): the table that drives the generic tests in ``tests/test_registry.py``
and the golden parameter trees that ``scripts/regen_golden.py`` writes.

A ``BlockCase`` builds its block, its positional ``apply`` inputs and, where one exists, the
PyTorch twin whose ``state_dict`` the block's ``params | state`` must mirror. Inputs come from
``deepfn.random`` with fixed seeds, so every run sees the same numbers. Keep every case cheap
(channels and widths of a few units, batch 2-3): each runs a dozen checks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn as tnn

from deepfn import models, nn, random, tree
from tests.models import seed_twins as twins

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
REGEN_HINT = "python scripts/regen_golden.py"


@dataclass(frozen=True)
class BlockCase:
    """One registry entry.

    Attributes:
        name: unique id; also the golden file's stem (``tests/golden/<name>.json``).
        make_block: builds the block (a frozen dataclass with ``init``/``apply``).
        make_inputs: builds the positional inputs of ``apply`` (fresh tensors each call).
        make_twin: builds the ``torch.nn`` (or seed) twin whose ``state_dict`` names and
            shapes equal ``tree.flatten(params) | tree.flatten(state)``; ``None`` if none exists.
        train_ok: the block runs with ``train=True`` given a key (checked pure, deterministic
            and under vmap in that mode too).
        compile: run ``check_block``'s ``torch.compile(fullgraph=True)`` check. Compiling is
            the slow part of this file, so it runs once per layer class (the first case) and
            for the smallest model, MLP; the transformer layers, AdvancedCNN and Transformer
            are compiled by their own tests (tests/nn/test_transformer_layers.py,
            tests/models/test_cnn.py, tests/models/test_transformer.py).
    """

    name: str
    make_block: Callable[[], Any]
    make_inputs: Callable[[], tuple[Any, ...]]
    make_twin: Callable[[], tnn.Module] | None = None
    train_ok: bool = True
    compile: bool = True

    def __repr__(self) -> str:  # pytest ids and failure messages show the name only
        return f"BlockCase({self.name})"


def normal(seed: int, *shape: int) -> torch.Tensor:
    return random.normal(random.key(seed), shape)


def tokens(seed: int, batch: int, length: int, vocab: int, pad_tail: tuple[int, ...] = ()) -> torch.Tensor:
    """``int64 [batch, length]`` ids in ``[1, vocab)``; row ``i`` ends in ``pad_tail[i]`` zeros (pad)."""
    ids = random.randint(random.key(seed), (batch, length), 1, vocab)
    for row, n in enumerate(pad_tail):
        if n:
            ids[row, length - n:] = 0
    return ids


def padding(lengths: list[int], length: int) -> torch.Tensor:
    """Bool ``[b, 1, 1, length]`` key mask, True on each row's first ``lengths[i]`` positions."""
    valid = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    return valid[:, None, None, :]


class TransformerTwin(tnn.Module):
    """Holds torch.nn modules under the names the seq2seq ``Transformer`` promises (parity only)."""

    def __init__(self, m: models.Transformer) -> None:
        super().__init__()
        if m.share_embeddings:
            self.embedding = tnn.Embedding(m.vocab_size, m.d_model)
        else:
            self.src_embedding = tnn.Embedding(m.vocab_size, m.d_model)
            self.tgt_embedding = tnn.Embedding(m.vocab_size, m.d_model)
        layer = dict(d_model=m.d_model, nhead=m.n_heads, dim_feedforward=m.d_ff, dropout=m.dropout,
                     batch_first=True, norm_first=m.norm_first)
        self.encoder = tnn.TransformerEncoder(tnn.TransformerEncoderLayer(**layer), m.n_layers,
                                              norm=tnn.LayerNorm(m.d_model) if m.norm_first else None,
                                              enable_nested_tensor=False)
        self.decoder = tnn.TransformerDecoder(tnn.TransformerDecoderLayer(**layer), m.n_layers,
                                              norm=tnn.LayerNorm(m.d_model) if m.norm_first else None)
        if not m.tie_output:
            self.output_layer = tnn.Linear(m.d_model, m.vocab_size)


def _transformer(**overrides: Any) -> models.Transformer:
    cfg = dict(vocab_size=11, d_model=8, n_heads=2, n_layers=1, d_ff=16, dropout=0.1, max_seq_len=8)
    return models.Transformer(**(cfg | overrides))


_UNTIED = dict(share_embeddings=False, tie_output=True, norm_first=True)
_ENC = dict(d_model=8, n_heads=2, d_ff=16, dropout=0.1)
_CNN = dict(input_channels=3, num_classes=3, base_channels=2, num_blocks=(1, 1, 1, 1))
# Images large enough that the last stage keeps 2x2 pixels: training-mode BatchNorm over a
# batch of 2 single pixels divides by the spread of two numbers and blows up float32 roundoff
# (vmap and compile then differ from eager by 1e-4 for numerical, not semantic, reasons).

CASES: list[BlockCase] = [
    BlockCase("Dense", lambda: nn.Dense(5, 3), lambda: (normal(1, 3, 5),),
              lambda: tnn.Linear(5, 3)),
    BlockCase("Dense_nobias", lambda: nn.Dense(4, 2, bias=False), lambda: (normal(2, 2, 3, 4),),
              lambda: tnn.Linear(4, 2, bias=False), compile=False),
    BlockCase("Conv2d", lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1),
              lambda: (normal(3, 2, 2, 6, 6),),
              lambda: tnn.Conv2d(2, 3, 3, stride=2, padding=1)),
    BlockCase("Conv2d_groups_same",
              lambda: nn.Conv2d(4, 4, (3, 1), padding="same", bias=False, groups=2),
              lambda: (normal(4, 2, 4, 5, 4),),
              lambda: tnn.Conv2d(4, 4, (3, 1), padding="same", bias=False, groups=2), compile=False),
    BlockCase("BatchNorm", lambda: nn.BatchNorm(3), lambda: (normal(5, 3, 3, 2, 2),),
              lambda: tnn.BatchNorm2d(3)),
    BlockCase("BatchNorm_1d", lambda: nn.BatchNorm(4, momentum=None), lambda: (normal(6, 3, 4),),
              lambda: tnn.BatchNorm1d(4, momentum=None), compile=False),
    BlockCase("LayerNorm", lambda: nn.LayerNorm(4), lambda: (normal(7, 2, 3, 4),),
              lambda: tnn.LayerNorm(4)),
    BlockCase("Dropout", lambda: nn.Dropout(0.5), lambda: (normal(8, 3, 4),),
              lambda: tnn.Dropout(0.5)),
    BlockCase("Embedding", lambda: nn.Embedding(7, 4, padding_idx=0),
              lambda: (tokens(9, 2, 5, 7, (0, 2)),),
              lambda: tnn.Embedding(7, 4, padding_idx=0)),
    # No twin: the seed keeps its table as a state_dict buffer, deepfn recomputes it.
    BlockCase("PositionalEncoding", lambda: nn.PositionalEncoding(4, max_len=8),
              lambda: (normal(10, 2, 5, 4),)),
    BlockCase("MultiHeadAttention", lambda: nn.MultiHeadAttention(8, 2, dropout=0.1),
              lambda: (normal(11, 2, 5, 8), None, padding([5, 3], 5)),
              lambda: tnn.MultiheadAttention(8, 2, dropout=0.1, batch_first=True)),
    BlockCase("MultiHeadAttention_cross", lambda: nn.MultiHeadAttention(8, 4, impl="math"),
              lambda: (normal(12, 2, 3, 8), normal(13, 2, 5, 8)),
              lambda: tnn.MultiheadAttention(8, 4, batch_first=True), compile=False),
    BlockCase("TransformerEncoderLayer", lambda: nn.TransformerEncoderLayer(**_ENC),
              lambda: (normal(14, 2, 5, 8), padding([5, 2], 5)),
              lambda: tnn.TransformerEncoderLayer(8, 2, 16, 0.1, batch_first=True), compile=False),
    BlockCase("TransformerDecoderLayer",
              lambda: nn.TransformerDecoderLayer(**_ENC, norm_first=True, activation="gelu"),
              lambda: (normal(15, 2, 4, 8), normal(16, 2, 5, 8), nn.causal_mask(4), padding([5, 3], 5)),
              lambda: tnn.TransformerDecoderLayer(8, 2, 16, 0.1, "gelu", batch_first=True,
                                                  norm_first=True),
              compile=False),
    BlockCase("ConvBlock", lambda: nn.ConvBlock(2, 3, dropout_rate=0.2),
              lambda: (normal(17, 2, 2, 5, 5),), lambda: twins.TwinConvBlock(2, 3)),
    BlockCase("ResidualBlock", lambda: nn.ResidualBlock(2, 4, stride=2),
              lambda: (normal(18, 2, 2, 6, 6),), lambda: twins.TwinResidualBlock(2, 4, 2)),
    BlockCase("ResidualBlock_identity", lambda: nn.ResidualBlock(3, 3),
              lambda: (normal(19, 2, 3, 4, 4),), lambda: twins.TwinResidualBlock(3, 3), compile=False),
    BlockCase("SEBlock", lambda: nn.SEBlock(4, reduction=2), lambda: (normal(20, 2, 4, 3, 3),),
              lambda: twins.TwinSE(4, 2)),
    BlockCase("SpatialAttention", lambda: nn.SpatialAttention(kernel_size=3),
              lambda: (normal(21, 2, 3, 4, 4),), lambda: twins.TwinSpatialAttention(3)),
    BlockCase("MLP", lambda: models.MLP(5, (6, 4), 3, dropout_rate=0.2, batch_norm=True),
              lambda: (normal(22, 3, 5),),
              lambda: twins.TwinMLP(5, (6, 4), 3, dropout_rate=0.2, batch_norm=True)),
    BlockCase("AdvancedCNN", lambda: models.AdvancedCNN(**_CNN, stem="cifar", spatial_attention=True),
              lambda: (normal(23, 2, 3, 16, 16),),
              lambda: twins.TwinCNN(**_CNN, stem="cifar", spatial_attention=True), compile=False),
    BlockCase("AdvancedCNN_imagenet",
              lambda: models.AdvancedCNN(**_CNN, use_attention=False, dropout_rate=0.0),
              lambda: (normal(24, 2, 3, 64, 64),),
              lambda: twins.TwinCNN(**_CNN, use_attention=False), compile=False),
    BlockCase("Transformer", _transformer,
              lambda: (tokens(25, 2, 5, 11, (0, 2)), tokens(26, 2, 4, 11, (1, 0))),
              lambda: TransformerTwin(_transformer()), compile=False),
    BlockCase("Transformer_untied_prenorm", lambda: _transformer(**_UNTIED),
              lambda: (tokens(27, 3, 4, 11, (1, 0, 0)), tokens(28, 3, 6, 11, (0, 2, 0))),
              lambda: TransformerTwin(_transformer(**_UNTIED)), compile=False),
]


class GPTTwin(tnn.Module):
    """torch.nn modules under the names ``models.GPT`` promises (state_dict parity only; the
    numerical twin, ``transformers.GPT2LMHeadModel``, is tested in tests/models/test_gpt2_interop.py)."""

    def __init__(self, m: models.GPT) -> None:
        super().__init__()
        self.wte = tnn.Embedding(m.vocab_size, m.d_model)
        self.wpe = tnn.Embedding(m.max_len, m.d_model)
        self.layers = tnn.ModuleList(
            tnn.TransformerEncoderLayer(m.d_model, m.n_heads, m.d_ff or 4 * m.d_model, m.dropout,
                                        batch_first=True, norm_first=True) for _ in range(m.n_layers))
        self.ln_f = tnn.LayerNorm(m.d_model)
        if not m.tie_embeddings:
            self.lm_head = tnn.Linear(m.d_model, m.vocab_size, bias=False)


def _gpt(**overrides: Any) -> models.GPT:
    cfg = dict(vocab_size=11, max_len=8, d_model=8, n_layers=2, n_heads=2, dropout=0.1)
    return models.GPT(**(cfg | overrides))


_GPT_UNTIED = dict(tie_embeddings=False, d_ff=12, n_layers=1)
# Compiled in tests/models/test_gpt.py.
CASES += [
    BlockCase("GPT", _gpt, lambda: (tokens(29, 2, 6, 11),), lambda: GPTTwin(_gpt()), compile=False),
    BlockCase("GPT_untied", lambda: _gpt(**_GPT_UNTIED), lambda: (tokens(30, 3, 8, 11),),
              lambda: GPTTwin(_gpt(**_GPT_UNTIED)), compile=False),
]

BY_NAME = {case.name: case for case in CASES}


def public_blocks() -> dict[str, type]:
    """Every class that ``deepfn.nn`` or ``deepfn.models`` exports with ``init`` and ``apply``."""
    out = {}
    for module in (nn, models):
        for attr, obj in vars(module).items():
            # Any exported class with the protocol's methods counts, dataclass or not.
            if (isinstance(obj, type) and not attr.startswith("_")
                    and callable(getattr(obj, "init", None)) and callable(getattr(obj, "apply", None))):
                out[f"{module.__name__}.{attr}"] = obj
    return out


def _spec(x: torch.Tensor) -> str:
    kind = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16",
            torch.int64: "i64", torch.int32: "i32", torch.bool: "bool"}.get(x.dtype, str(x.dtype))
    return f"{kind}[{', '.join(str(s) for s in x.shape)}]"


def golden_tree(case: BlockCase) -> dict[str, Any]:
    """``{"tree": {flat name: "f32[out, in]"}, "total_size": elements}`` of params | state."""
    params, state = case.make_block().init(random.key(0))
    flat_params, flat_state = tree.flatten(params), tree.flatten(state)
    clash = set(flat_params) & set(flat_state)
    if clash:
        raise ValueError(f"{case.name}: names in both params and state: {sorted(clash)}")
    flat = flat_params | flat_state
    return {"tree": {name: _spec(flat[name]) for name in sorted(flat)},
            "total_size": sum(math.prod(x.shape) for x in flat.values())}


def golden_path(case: BlockCase) -> Path:
    return GOLDEN_DIR / f"{case.name}.json"


def write_golden(case: BlockCase) -> Path:
    path = golden_path(case)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(golden_tree(case), indent=2) + "\n")
    return path

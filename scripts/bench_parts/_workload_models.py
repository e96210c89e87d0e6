"""The nn.Module twins of the benchmark workloads, built so ``deepfn.interop`` copies weights.

Each twin has the deepfn model's ``state_dict`` names, so ``interop.to_torch(block, params,
state, twin)`` loads the very weights deepfn starts from and both contenders train the same
network from the same point:

- ``torch_mlp``: the seed's layer order as a bare ``torch.nn.Sequential`` (interop strips
  deepfn's ``network.`` prefix).
- ``SEResNet``: a torchvision-style basic-block ResNet (torchvision's own ``BasicBlock``)
  with the seed's stem names (``conv1.conv``, ``conv1.batch_norm``), one squeeze-excitation
  gate after the last stage (``attention.excitation.0/2``), dropout and ``fc``.
- ``Seq2SeqTransformer``: ``torch.nn.Embedding`` (shared by source and target, scaled by
  ``sqrt(d_model)``) + sinusoidal positions + ``torch.nn.TransformerEncoder`` /
  ``TransformerDecoder`` (post-LN, ``batch_first``) + ``torch.nn.Linear`` to the vocabulary.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

if TYPE_CHECKING:   # annotations only: a plain-PyTorch job can build a twin without importing deepfn
    from deepfn.models import MLP, AdvancedCNN, Transformer

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU}


def torch_mlp(model: MLP) -> nn.Sequential:
    """``[Linear, BatchNorm1d?, activation, Dropout?] x len(hidden_dims), Linear``."""
    layers: list[nn.Module] = []
    width = model.input_dim
    for hidden in model.hidden_dims:
        layers.append(nn.Linear(width, hidden))
        if model.batch_norm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(_ACTIVATIONS[model.activation]())
        if model.dropout_rate > 0:
            layers.append(nn.Dropout(model.dropout_rate))
        width = hidden
    layers.append(nn.Linear(width, model.output_dim))
    return nn.Sequential(*layers)


class _Stem(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, padding: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=False)
        self.batch_norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.batch_norm(self.conv(x)))


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = channels // reduction
        self.excitation = nn.Sequential(nn.Linear(channels, hidden, bias=False), nn.ReLU(),
                                        nn.Linear(hidden, channels, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.excitation(x.mean(dim=(2, 3)))[:, :, None, None]


class SEResNet(nn.Module):
    """The twin of ``AdvancedCNN(use_attention=True, spatial_attention=False)``."""

    def __init__(self, model: AdvancedCNN):
        super().__init__()
        if model.spatial_attention or not model.use_attention:
            raise ValueError(f"SEResNet: twin of AdvancedCNN with SE only; got {model!r}")
        base, self.imagenet_stem = model.base_channels, model.stem == "imagenet"
        stem = (7, 2, 3) if self.imagenet_stem else (3, 1, 1)
        self.conv1 = _Stem(model.input_channels, base, *stem)
        width_in = base
        for i, count in enumerate(model.num_blocks):
            width, stride = base * 2 ** i, 1 if i == 0 else 2
            blocks = []
            for j in range(count):
                cin, s = (width_in, stride) if j == 0 else (width, 1)
                down = None
                if s != 1 or cin != width:
                    down = nn.Sequential(nn.Conv2d(cin, width, 1, s, bias=False), nn.BatchNorm2d(width))
                blocks.append(BasicBlock(cin, width, s, downsample=down))
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            width_in = width
        self.attention = _SqueezeExcite(8 * base)
        self.dropout = nn.Dropout(model.dropout_rate)
        self.fc = nn.Linear(8 * base, model.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        if self.imagenet_stem:
            y = nn.functional.max_pool2d(y, kernel_size=3, stride=2, padding=1)
        y = self.layer4(self.layer3(self.layer2(self.layer1(y))))
        y = self.attention(y).mean(dim=(2, 3))
        return self.fc(self.dropout(y))


def _sinusoid_table(length: int, d_model: int) -> torch.Tensor:
    position = torch.arange(length, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate)
    return table


class Seq2SeqTransformer(nn.Module):
    """The twin of ``deepfn.models.Transformer`` (post-LN, shared embedding, untied output)."""

    def __init__(self, model: Transformer):
        super().__init__()
        if model.norm_first or not model.share_embeddings or model.tie_output:
            raise ValueError(f"Seq2SeqTransformer: post-LN, shared embeddings, untied output only; got {model!r}")
        d, self.pad, self.scale = model.d_model, model.pad_token_id, math.sqrt(model.d_model)
        self.embedding = nn.Embedding(model.vocab_size, d)
        layer = dict(d_model=d, nhead=model.n_heads, dim_feedforward=model.d_ff, dropout=model.dropout,
                     activation=model.activation, batch_first=True)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer), model.n_layers,
                                             enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer), model.n_layers)
        self.output_layer = nn.Linear(d, model.vocab_size)
        self.dropout = nn.Dropout(model.dropout)
        self.register_buffer("positions", _sinusoid_table(model.max_seq_len, d), persistent=False)

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embedding(tokens) * self.scale + self.positions[: tokens.shape[1]]
        return self.dropout(x)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        # torch's bool masks mean "may NOT attend" (deepfn's are the opposite).
        src_pad, tgt_pad = src == self.pad, tgt == self.pad
        t = tgt.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=tgt.device).triu(1)
        memory = self.encoder(self._embed(src), src_key_padding_mask=src_pad)
        # tgt_is_causal: the mask is known causal, so torch need not compare it on every call (a
        # data-dependent check that breaks torch.compile's graph in two).
        y = self.decoder(self._embed(tgt), memory, tgt_mask=causal, tgt_key_padding_mask=tgt_pad,
                         memory_key_padding_mask=src_pad, tgt_is_causal=True)
        return self.output_layer(y)

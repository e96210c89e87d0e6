"""Layers: frozen dataclasses with pure ``init(key)`` / ``apply(params, state, *x, key, train)``."""

from . import activations as activations
from . import initializers as initializers
from .attention import MultiHeadAttention as MultiHeadAttention
from .batch_norm import BatchNorm as BatchNorm
from .block import child_state as child_state
from .block import init_children as init_children
from .block import merge_state as merge_state
from .block import split_key as split_key
from .conv import Conv2d as Conv2d
from .dense import Dense as Dense
from .dropout import Dropout as Dropout
from .dropout import dropout as dropout
from .embedding import Embedding as Embedding
from .layer_norm import LayerNorm as LayerNorm
from .masks import causal_mask as causal_mask
from .masks import combine as combine
from .masks import padding_mask as padding_mask
from .positional import PositionalEncoding as PositionalEncoding
from .resnet import ConvBlock as ConvBlock
from .resnet import ResidualBlock as ResidualBlock
from .spatial_attention import SpatialAttention as SpatialAttention
from .squeeze_excite import SEBlock as SEBlock
from .transformer import TransformerDecoderLayer as TransformerDecoderLayer
from .transformer import TransformerEncoderLayer as TransformerEncoderLayer

__all__ = [
    "BatchNorm", "Conv2d", "ConvBlock", "Dense", "Dropout", "Embedding", "LayerNorm",
    "MultiHeadAttention", "PositionalEncoding", "ResidualBlock", "SEBlock", "SpatialAttention",
    "TransformerDecoderLayer", "TransformerEncoderLayer", "activations", "causal_mask",
    "child_state", "combine", "dropout", "init_children", "initializers", "merge_state",
    "padding_mask", "split_key",
]

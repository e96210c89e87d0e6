"""Layers: frozen dataclasses with pure ``init(key)`` / ``apply(params, state, *x, key, train)``."""

from . import activations as activations
from . import initializers as initializers
from .block import init_children as init_children
from .block import split_key as split_key
from .dense import Dense as Dense
from .dropout import Dropout as Dropout
from .dropout import dropout as dropout
from .layer_norm import LayerNorm as LayerNorm

"""Models built from ``deepfn.nn`` blocks: the seed's ``MLP`` and ``AdvancedCNN`` in functional form."""

from .cnn import AdvancedCNN as AdvancedCNN
from .mlp import MLP as MLP
from .mlp import num_parameters as num_parameters

__all__ = ["AdvancedCNN", "MLP", "num_parameters"]
from .transformer import Transformer as Transformer  # noqa: E402

__all__ += ["Transformer"]

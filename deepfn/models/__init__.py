"""Models built from ``deepfn.nn`` blocks: the seed's ``MLP`` and ``AdvancedCNN`` in functional form."""

from .cnn import AdvancedCNN as AdvancedCNN
from .mlp import MLP as MLP
from .mlp import num_parameters as num_parameters

__all__ = ["AdvancedCNN", "MLP", "num_parameters"]
from .transformer import Transformer as Transformer  # noqa: E402

__all__ += ["Transformer"]
from .gpt import GPT as GPT  # noqa: E402

__all__ += ["GPT"]
from .sampling import generate as generate  # noqa: E402

__all__ += ["generate"]

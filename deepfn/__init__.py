"""deepfn: functional, JAX-style deep learning on PyTorch's ``torch.func``.

Subpackages: ``tree`` (pytrees), ``random`` (explicit keys), ``nn`` (layers), ``models``,
``interop`` (weights to and from torch.nn), ``optim``, ``losses``, ``amp``, ``train``,
``checkpoint``, ``distributed``, ``data``; ``deepfn.testing`` (property checks) is imported
on demand because its strategies need hypothesis.
"""

from . import (
    amp,
    checkpoint,
    data,
    distributed,
    interop,
    losses,
    models,
    nn,
    optim,
    random,
    train,
    tree,
)
from .train.remat import remat

__version__ = "0.1.0"
__all__ = [
    "amp", "checkpoint", "data", "distributed", "interop", "losses", "models", "nn", "optim",
    "random", "remat", "train", "tree", "__version__",
]

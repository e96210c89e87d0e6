"""deepfn: functional, JAX-style deep learning on PyTorch's ``torch.func``."""

from . import interop, nn, random, tree

__version__ = "0.1.0"
__all__ = ["interop", "nn", "random", "tree", "__version__"]

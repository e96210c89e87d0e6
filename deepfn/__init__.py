"""deepfn: functional, JAX-style deep learning on PyTorch's ``torch.func``."""

from . import interop, models, nn, random, tree
from . import losses, optim
from . import amp, checkpoint, train
from . import distributed
from .remat import remat as remat

__version__ = "0.1.0"
__all__ = ["models", "interop", "nn", "random", "tree", "__version__"]

"""Copy weights between deepfn blocks and their PyTorch twins.

Because deepfn's parameter and state names equal the twin's ``state_dict`` names, most
pairs convert by flattening the trees; models whose twins use other names (torchvision's
ResNet, the seed's ``nn.Sequential`` MLP) go through an explicit rename table in
:mod:`deepfn.interop.renames`. ``models.GPT`` and ``transformers.GPT2LMHeadModel``, whose
``Conv1D`` weights are stored transposed, go through :mod:`deepfn.interop.gpt2`.
"""

from __future__ import annotations

from .core import from_torch as from_torch
from .core import to_torch as to_torch

__all__ = ["from_torch", "to_torch"]

"""Rename tables for twins whose ``state_dict`` names differ from deepfn's.

``find(block, module)`` returns ``None`` when names already match, else a function
mapping each deepfn flat name (``"layer1.0.conv1.weight"``) to the twin's name.
Models add their tables here (one function per pair) and register them in ``_TABLES``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import seed_names, torchvision

__all__ = ["find"]

Rename = Callable[[str], str]
#: ``(matches(block, module), make_rename(block, module))`` pairs, tried in order.
_TABLES: list[tuple[Callable[[Any, torch.nn.Module], bool], Callable[[Any, torch.nn.Module], Rename]]] = [
    (seed_names.matches_sequential_mlp, seed_names.sequential_mlp),
    (torchvision.matches_resnet, torchvision.resnet),
]


def find(block: Any, module: torch.nn.Module) -> Rename | None:
    for matches, make in _TABLES:
        if matches(block, module):
            return make(block, module)
    return None

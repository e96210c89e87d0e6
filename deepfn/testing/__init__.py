"""Property checks for blocks that follow deepfn's protocol, a user's own included (API §12).

``check_block`` runs the checks deepfn's own tests use (purity, determinism, evaluation
state, batch independence, vmap, compile); ``check_mask_invariance`` and ``check_causal``
check sequence functions; ``allocated`` measures the bytes a call allocates (memory claims).
``deepfn.testing.strategies`` holds hypothesis strategies and is
imported on first use, so nothing here needs hypothesis until you ask for it.

Examples:
    >>> import torch
    >>> from deepfn import nn
    >>> from deepfn.testing import check_block
    >>> check_block(nn.LayerNorm(4), torch.randn(3, 4), checks=["pure", "batch_independent"])
"""

from __future__ import annotations

import importlib
from typing import Any

from .block_checks import CHECKS as CHECKS
from .block_checks import check_block as check_block
from .mask_checks import check_causal as check_causal
from .mask_checks import check_mask_invariance as check_mask_invariance
from .memory import allocated as allocated

__all__ = ["CHECKS", "allocated", "check_block", "check_causal", "check_mask_invariance", "strategies"]


def __getattr__(name: str) -> Any:
    # hypothesis is optional: load the strategies only when someone asks for them.
    if name == "strategies":
        return importlib.import_module(".strategies", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

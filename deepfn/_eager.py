"""Whether code runs eagerly on plain tensors: the one test behind every eager-only fast path.

Fast paths that write into tensors, read a flag on the host or call ``_foreach`` kernels are
valid only outside ``torch.compile`` (Dynamo cannot trace the functorch probe, and the
compiler fuses the plain code anyway) and outside ``torch.func`` transforms (wrapped tensors
have no batching rule for ``_foreach`` ops and must not be read on the host).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def plain_eager(tensors: Iterable[torch.Tensor]) -> bool:
    """True when not compiling or tracing and none of ``tensors`` is functorch-wrapped (False for none)."""
    if torch.compiler.is_compiling() or _tracing():
        return False
    tensors = list(tensors)
    return bool(tensors) and not any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)


def _tracing() -> bool:
    """A ``make_fx`` trace (``torch.compiler.precompile``, ``torch.export``): tensors hold no values."""
    from torch.fx.experimental.proxy_tensor import get_proxy_mode
    return get_proxy_mode() is not None

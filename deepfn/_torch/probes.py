"""Where code runs: the one "plain eager tensors?" probe behind every eager-only fast path.

Fast paths that write into tensors, read a value on the host, call ``torch._foreach_*``
kernels or call a C loop on raw buffers are valid only eagerly on plain tensors: outside
``torch.compile`` (Dynamo cannot trace the functorch probe, and Inductor fuses the plain code
anyway), outside tracing and fake-tensor modes (their tensors hold no values), and on tensors
that no ``torch.func`` transform has wrapped (wrapped tensors have no batching rule for
``_foreach`` ops and must not be read on the host). Public fallback when the hook is off:
"not plain", so every caller takes its general path.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable

import torch
from torch.fx.experimental.proxy_tensor import get_proxy_mode

from .gate import hook_on, turn_off


def plain_eager(tensors: Iterable[torch.Tensor]) -> bool:
    """True when not compiling, tracing or under a dispatch mode (fake, functional, proxy), and
    ``tensors`` are at least one and none is wrapped by a ``torch.func`` transform.

    False whenever that cannot be known (the hook off): callers then take the general path.
    """
    if torch.compiler.is_compiling() or not hook_on("functorch_probe"):
        return False
    tensors = list(tensors)
    if not tensors or get_proxy_mode() is not None:
        return False
    try:
        if torch._C._len_torch_dispatch_stack() != 0:
            return False
        wrapped = torch._C._functorch.is_functorch_wrapped_tensor
        return not any(wrapped(t) for t in tensors)
    except Exception as error:   # a moved or changed private function: "not plain" from now on
        turn_off("functorch_probe", error)
        return False


def transforms_active() -> bool:
    """True when a ``torch.func`` transform (``vmap``, ``grad``, ...) is active, or when that
    cannot be known (the hook off). Dynamo folds the private probe to a constant while it
    traces, so this also works inside compiled code."""
    if not hook_on("functorch_probe"):
        return True
    try:
        return torch._C._functorch.peek_interpreter_stack() is not None
    except Exception as error:
        turn_off("functorch_probe", error)
        return True


def cpu_bf16_in_hardware() -> bool | None:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX-512 BF16 or AMX tiles).

    ``False`` where oneDNN emulates them (x86 without those instructions), ``None`` where it
    cannot be told (another architecture, or the hook off and the public capability string
    says AVX-512 without saying which extensions).
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    if hook_on("cpu_isa"):
        try:
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        except Exception as error:   # a moved or renamed probe: the public string from now on
            turn_off("cpu_isa", error)
    capability = torch.backends.cpu.get_cpu_capability()
    return False if capability in ("DEFAULT", "NO AVX", "AVX2") else None

"""Whether a device computes in bfloat16 in hardware, so that a bf16 policy pays off there."""

from __future__ import annotations

import torch

from .._torch import cpu_bf16_in_hardware

__all__ = ["bf16_in_hardware"]


def bf16_in_hardware(device: torch.device | str) -> bool | None:
    """``True`` when ``device`` multiplies bfloat16 matrices in hardware, ``False`` when it emulates them.

    CPUs: AVX-512 BF16 or AMX tiles (x86); without them oneDNN emulates bf16 products, which
    then run many times slower than float32 ones, so a bf16 :class:`~deepfn.amp.Policy` costs
    time instead of saving it. CUDA: ``torch.cuda.is_bf16_supported(including_emulation=False)``.
    ``None`` when it cannot be told (another architecture or device type).

    Examples:
        >>> bf16_in_hardware("cpu") in (True, False, None)
        True
    """
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        return cpu_bf16_in_hardware()
    return None

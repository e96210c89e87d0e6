"""How many bytes a call allocates on the CPU, from the profiler's allocation events: a check
for memory claims (a sharded step holds about 1/N of the model, a remat'd forward keeps less).

Examples:
    >>> import torch
    >>> from deepfn.testing import allocated
    >>> peak, kept = allocated(lambda: torch.ones(1024, dtype=torch.float64).sum())
    >>> peak >= 8192, kept
    (True, 0)
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.profiler import ProfilerActivity, profile

__all__ = ["allocated"]


def allocated(fn: Callable[[], Any], repeats: int = 1) -> tuple[int, int]:
    """``(peak, kept)``: the most bytes alive at once of those allocated during a call of
    ``fn()``, in every thread (gloo's too), and those of them still alive when it returned;
    each the least over ``repeats`` calls (other threads allocate differently each time).

    Each allocation of the profiler's trace is matched with its free by address, or with the
    next allocation at that address (some frees go unrecorded). Frees of memory allocated
    before the call are left out, so ``peak`` is an upper bound for a call that frees state it
    was given. CPU allocations only.

    Raises:
        ValueError: ``repeats`` is not a positive integer.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"deepfn.testing.allocated: repeats must be a positive int; got {repeats!r}")
    found = [_one_call(fn) for _ in range(repeats)]
    return min(p for p, _ in found), min(k for _, k in found)


def _one_call(fn: Callable[[], Any]) -> tuple[int, int]:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    changes = sorted((e["ts"], e["args"]["Addr"], e["args"]["Bytes"]) for e in events
                     if e.get("name") == "[memory]" and e["args"].get("Bytes"))
    sizes: dict[int, int] = {}
    live = peak = 0
    for _, address, nbytes in changes:
        live -= sizes.pop(address, 0)   # an address allocated again was freed in between
        if nbytes > 0:
            sizes[address] = nbytes
            live += nbytes
            peak = max(peak, live)
    return peak, live

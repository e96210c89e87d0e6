"""Bytes a call allocates, from the profiler's allocation events (CPU, every thread): each
allocation matched with its free by address, as the shard benchmark measures peaks."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from torch.profiler import ProfilerActivity, profile


def allocated(fn, repeats: int = 3) -> tuple[int, int]:
    """``(peak, kept)``: the most bytes alive at once of those ``fn`` allocated, and those still
    alive when it returned; the least of ``repeats`` calls (gloo's threads allocate too)."""
    found = [one_call(fn) for _ in range(repeats)]
    return min(p for p, _ in found), min(k for _, k in found)


def one_call(fn) -> tuple[int, int]:
    """``(peak, kept)`` of one call of ``fn``."""
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

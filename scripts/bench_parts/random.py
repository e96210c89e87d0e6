"""Benchmark: drawing 10^7 samples from deepfn.random vs torch's global-RNG samplers.

Rows: ``uniform`` and ``normal`` float32, eager and ``torch.compile(fullgraph=True)``,
against ``torch.rand`` / ``torch.randn`` (MT19937/Philox behind a global generator; deepfn
pays for a keyed counter-based Threefry-2x32 in int64 arithmetic). Quick: 10^6 samples.
Medians of interleaved repeats; the compile call is a warm-up, outside the timing.
"""

from __future__ import annotations

import statistics
import time

import torch

from deepfn import random

GROUP = "random"


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _medians(fns, repeats: int) -> list[float]:
    for fn in fns:      # warm-up (and compilation)
        fn()
    _sync()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            _sync()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def run(quick: bool = False) -> list[dict]:
    n = 10**6 if quick else 10**7
    repeats = 3 if quick else 5
    device = "cuda" if torch.cuda.is_available() else "cpu"
    key = random.key(0).to(device)
    rows = []
    for sampler, twin in (("uniform", torch.rand), ("normal", torch.randn)):
        draw = getattr(random, sampler)

        def eager(draw=draw):
            return draw(key, (n,))

        compiled = torch.compile(eager, fullgraph=True)

        def baseline(twin=twin):
            return twin(n, device=device)

        t_eager, t_compiled, t_base = _medians([eager, compiled, baseline], repeats)
        for mode, t in (("eager", t_eager), ("compiled", t_compiled)):
            rows.append({
                "group": GROUP, "name": f"{sampler} float32 n={n:.0e} {mode}",
                "deepfn_s": t, "baseline": f"torch.{twin.__name__}", "baseline_s": t_base,
                "ratio": t / t_base, "note": f"{device}, {torch.get_num_threads()} threads, median of {repeats}",
            })
    return rows

"""How the workloads bench times a comparison: start every contender (cold compiles, one at a
time, each into its own fresh cache), then time all of them in turns, then measure warm starts.

Why in turns: this 2-core machine's speed drifts by 20-40% over minutes, so two step times
taken minutes apart compare the machine's moods as much as the code (a compiled bf16 step
read 1.43x eager autocast against a timing from minutes earlier, 1.01-1.10x back to back).
Timing the contenders in alternating blocks puts any drift on all of them alike.
"""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from deepfn import _torch

COLD_ENV = "DEEPFN_BENCH_COLD_CACHES"
BLOCKS = 5   # turns per contender in time_interleaved


@dataclass
class Contender:
    """A started contender: ``one_step()`` and its figures (``first_s``, ``cache_hits`` and, when
    compiled, ``compile_phases``; ``median_s``, ``min_s``, ``rss_mib`` once timed), and the
    on-disk Inductor cache its compile filled (None when not compiled)."""
    one_step: Callable[[], object]
    figures: dict = field(default_factory=dict)
    cache_dir: str | None = None


def phase_seconds() -> dict[str, tuple[int, float]]:
    """Per compile phase (Dynamo's ``dynamo_timed`` names): how many timings so far, their sum."""
    return _torch.phase_seconds()


def clear_in_memory_compile_caches() -> None:
    """What a new process would not have: Dynamo's compiled frames, Inductor's loaded kernels."""
    _torch.clear_compile_caches()


def cold_cache() -> None:
    """A fresh, empty on-disk Inductor cache for the next contender (when ``$DEEPFN_BENCH_COLD_CACHES``
    is 1, as scripts/bench.py sets it unless ``--keep-compile-cache``): its compile time then
    owes nothing to identical kernels an earlier contender of the same run compiled."""
    if os.environ.get(COLD_ENV) == "1":
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="deepfn-bench-inductor-")


def start(make: Callable[[], Callable[[], object]], compiled: bool) -> Contender:
    """Build a contender with ``make()``, time its first call (the compile, when ``compiled``),
    then call it once more untimed.

    A compiled contender compiles into a fresh on-disk cache with Inductor's in-memory kernels
    dropped, so nothing an earlier contender compiled shortens its compile; Dynamo's compiled
    frames stay, so the earlier contenders can still be timed beside it afterwards.
    """
    if compiled:
        cold_cache()
        _torch.clear_kernel_caches()
    hits, phases = _torch.fx_graph_cache_hits(), phase_seconds()
    one_step = make()
    t0 = time.perf_counter()
    one_step()
    figures = {"first_s": time.perf_counter() - t0, "cache_hits": _torch.fx_graph_cache_hits() - hits}
    if compiled:   # where the compile time went: the evidence for the compile-time rows
        spent = {k: round(v - phases.get(k, (0, 0.0))[1], 3) for k, (_, v) in phase_seconds().items()}
        figures["compile_phases"] = dict(sorted(((k, v) for k, v in spent.items() if v > 0), key=lambda kv: -kv[1]))
    one_step()
    return Contender(one_step, figures, os.environ.get("TORCHINDUCTOR_CACHE_DIR") if compiled else None)


def time_interleaved(contenders: Sequence[Contender], steps: int, blocks: int = BLOCKS,
                     sync: Callable[[], object] | None = None) -> None:
    """Time ``steps`` calls of every contender, in ``blocks`` turns each (contender A's block, then
    B's, ..., then A's again), and store ``median_s``, ``min_s`` and ``rss_mib`` in its figures.

    Each block starts with one untimed call: the caches hold the previous contender's data.
    ``rss_mib`` is the process's running maximum (all contenders live side by side). ``sync``,
    when given, runs untimed before every timed call (``dist.barrier``: ranks start together).
    """
    if steps < 1:
        raise ValueError(f"time_interleaved: steps must be >= 1; got {steps}")
    blocks = max(1, min(blocks, steps))
    times: list[list[float]] = [[] for _ in contenders]
    for b in range(blocks):
        n = steps // blocks + (b < steps % blocks)
        for contender, spent in zip(contenders, times, strict=True):
            contender.one_step()
            for _ in range(n):
                if sync is not None:
                    sync()
                t0 = time.perf_counter()
                contender.one_step()
                spent.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for contender, spent in zip(contenders, times, strict=True):
        contender.figures.update(median_s=statistics.median(spent), min_s=min(spent), rss_mib=rss)


def warm_start(make: Callable[[], Callable[[], object]], cache_dir: str | None) -> float:
    """Seconds of a fresh process's first compiled call once the on-disk cache holds the graphs:
    Dynamo's and Inductor's in-memory state is dropped, the contender's own on-disk cache (the
    one its cold compile filled, ``cache_dir``) kept. This invalidates every started compiled
    contender: call it after timing them."""
    if cache_dir is not None:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    clear_in_memory_compile_caches()
    one_step = make()
    t0 = time.perf_counter()
    one_step()
    return time.perf_counter() - t0

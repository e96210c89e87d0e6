"""Benchmark: one AdamW update, deepfn (out of place) vs ``torch.optim.AdamW(foreach=True).step()``.

Rows: eager and compiled, pure and donated, 10M parameters in 100 tensors (quick: 1M).
deepfn's time covers ``opt.update`` + ``apply_updates``; torch's covers ``step()`` on
gradients already in place. Pure rows write new params and moments (the caller may keep the
old ones); donated rows (``donate_state=True``, ``donate_params=True``, what
``make_train_step(donate=True)`` does) write them into the old tensors, as torch does.
Compiled rows compare ``torch.compile`` of deepfn's pure step with ``torch.compile`` of
torch's ``step`` (the pattern the torch.compile optimizer tutorial uses).
Targets: ratio <= 1.2 eager, <= 1.0 compiled.

Run as ``python -m scripts.bench_parts.optim [--quick]`` from the repository root. Eager and
donated, deepfn's AdamW writes the parameters itself (``adamw``'s ``update.in_place``, what the
train step calls): 7 passes over the parameters to torch's 8. Eager and pure, deepfn makes 9
passes (``apply_updates`` is the extra one) and 3 fresh outputs (moments, updates, which become the new params through
``donate_updates=True``, as in ``make_train_step``) to torch's one temporary; compiled,
both are one fused Inductor kernel with the same traffic, deepfn's writing fresh memory.
On CPU glibc's malloc trims freed memory and page-faults it back now and then, so single
runs are bimodal (a compiled row at 3-4x); ``MALLOC_TRIM_THRESHOLD_`` /
``MALLOC_MMAP_THRESHOLD_`` set high remove that. Repeat a run before trusting a ratio.
"""

from __future__ import annotations

import statistics
import time

import torch

from deepfn import optim

HYPER = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _median_times(fns, repeats: int, warmup: int) -> list[float]:
    """Medians per function, the calls interleaved so that machine load hits both alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    _sync()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=False):
            t0 = time.perf_counter()
            fn()
            _sync()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def _trees(total: int, n_tensors: int, device: str):
    per = total // n_tensors
    gen = torch.Generator().manual_seed(0)
    params = {f"layer{i}": {"weight": torch.randn(per, generator=gen).to(device)} for i in range(n_tensors)}
    grads = {k: {"weight": torch.randn(per, generator=gen).to(device) * 1e-2} for k in params}
    return params, grads


def _bench(total: int, n_tensors: int, compiled: bool, repeats: int, device: str, donate: bool) -> dict:
    params, grads = _trees(total, n_tensors, device)
    opt = optim.adamw(**HYPER)
    box = {"p": params, "s": opt.init(params)}

    def step(p, s, g):
        if donate and not compiled:   # as make_train_step(donate=True) eagerly: AdamW's own donated form
            done = opt.update.in_place(g, s, p)
            if done is not None:
                return done
        if donate:   # as make_train_step(donate=True) compiled: new state written into the old buffers
            u, s = opt.update(g, s, p, donate_state=True)
            return optim.apply_updates(p, u, donate_params=True), s
        u, s = opt.update(g, s, p)
        return optim.apply_updates(p, u, donate_updates=True), s   # as make_train_step applies them

    fn = torch.compile(step, fullgraph=True) if compiled else step

    def ours():
        box["p"], box["s"] = fn(box["p"], box["s"], grads)

    twins = [torch.nn.Parameter(v["weight"].clone()) for v in params.values()]
    for p, g in zip(twins, grads.values(), strict=False):
        p.grad = g["weight"].clone()
    torch_opt = torch.optim.AdamW(twins, foreach=True, **HYPER)
    torch_step = torch.compile(torch_opt.step) if compiled else torch_opt.step

    def theirs():
        with torch.no_grad():
            torch_step()

    warmup = 3 if compiled else 2
    ours_s, theirs_s = _median_times([ours, theirs], repeats, warmup)
    mode = ("compiled" if compiled else "eager") + ("_donated" if donate else "")
    return dict(group="optim", name=f"adamw_update_{mode}_{total // 10**6}M_{n_tensors}t", deepfn_s=ours_s,
                baseline=f"torch.optim.AdamW(foreach=True).step(){' compiled' if compiled else ''}",
                baseline_s=theirs_s, ratio=ours_s / theirs_s,
                note=f"{device}, {torch.get_num_threads()} threads, median of {repeats}")


def run(quick: bool = False) -> list[dict]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    total = 10**6 if quick else 10**7
    repeats = 10 if quick else 20
    return [_bench(total, 100, compiled, repeats, device, donate) for compiled in (False, True)
            for donate in (False, True)]


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    for row in run(quick=ap.parse_args().quick):
        print(row)

"""Benchmark: ``MultiHeadAttention`` forward + backward, SDPA kernel vs matmul kernel vs torch.

Self-attention at B=32, T=64, E=256, H=4 with a causal mask and without (quick: B=4,
T=16, E=32). The baseline is ``torch.nn.MultiheadAttention(batch_first=True)`` with the
same weights, forward + ``backward()`` through autograd, as are the deepfn rows
``impl="sdpa"`` and ``impl="math"`` (parameters and input require grad). A ``vmap`` row
compares an ensemble of 4 stacked parameter sets under ``vmap(grad)`` (``impl="auto"``
takes the matmul path there) with forcing SDPA, which has no CPU batching rule; another
compares per-example gradients over the batch the same way.
"""

from __future__ import annotations

import statistics
import time
import warnings

import torch
from torch.func import grad, vmap

from deepfn import interop, random, tree
from deepfn.nn import MultiHeadAttention, causal_mask


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _median_time(fn, repeats: int) -> float:
    fn()
    fn()                                   # warm-up (allocator, kernels)
    times = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _row(name: str, deepfn_s: float, baseline: str, baseline_s: float, note: str) -> dict:
    return {"group": "attention", "name": name, "deepfn_s": deepfn_s, "baseline": baseline,
            "baseline_s": baseline_s, "ratio": deepfn_s / baseline_s, "note": note}


def _auto_and_sdpa_times(e: int, h: int, make_call, repeats: int) -> dict[str, float]:
    """Median seconds of ``make_call(mha)()`` for a ``MultiHeadAttention(e, h)`` with
    ``impl="auto"`` and with ``impl="sdpa"``, SDPA's "no batching rule" warning silenced."""
    times = {}
    for impl in ("auto", "sdpa"):
        call = make_call(MultiHeadAttention(e, h, impl=impl))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            times[impl] = _median_time(call, repeats)
    return times


def run(quick: bool = False) -> list[dict]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    b, t, e, h, repeats = (4, 16, 32, 4, 5) if quick else (32, 64, 256, 4, 30)
    module = torch.nn.MultiheadAttention(e, h, batch_first=True).to(device)
    x = random.normal(random.key(0), (b, t, e)).to(device).requires_grad_(True)
    rows = []
    for masked in (False, True):
        mask = causal_mask(t, device=device) if masked else None
        torch_mask = ~mask[0, 0] if masked else None

        def torch_step(torch_mask=torch_mask) -> None:
            module(x, x, x, attn_mask=torch_mask, need_weights=False)[0].sum().backward()

        t_torch = _median_time(torch_step, repeats)
        times = {}
        for impl in ("sdpa", "math"):
            mha = MultiHeadAttention(e, h, impl=impl)
            params = tree.map(lambda p: p.requires_grad_(True), interop.from_torch(mha, module)[0])

            def step(mha=mha, params=params, mask=mask) -> None:
                mha.apply(params, {}, x, mask=mask)[0].sum().backward()

            times[impl] = _median_time(step, repeats)
            tag = "causal" if masked else "no mask"
            rows.append(_row(f"mha {impl} fwd+bwd B{b} T{t} E{e} H{h} {tag} ({device})", times[impl],
                             "torch.nn.MultiheadAttention fwd+bwd", t_torch,
                             "autograd backward through params and input"))
        rows[-1]["note"] += f"; sdpa/math = {times['sdpa'] / times['math']:.2f}"

    # Ensemble of 4 parameter sets under vmap(grad): why "auto" avoids SDPA under transforms.
    n = 4
    xs = x.detach()

    def ensemble(mha):
        stacked = tree.map(lambda p: p.to(device), tree.stack([mha.init(random.key(i))[0] for i in range(n)]))
        loss = lambda p: mha.apply(p, {}, xs, mask=causal_mask(t, device=device))[0].pow(2).mean()  # noqa: E731
        return lambda: vmap(grad(loss))(stacked)

    ens = _auto_and_sdpa_times(e, h, ensemble, max(3, repeats // 3))
    rows.append(_row(f"mha ensemble of {n} vmap(grad) auto(math) B{b} T{t} E{e} ({device})", ens["auto"],
                     "same with impl='sdpa' (per-example fallback)", ens["sdpa"],
                     "impl='auto' picks the matmul path under torch.func transforms"))

    # Per-example gradients of one parameter set over the batch: the other side of the choice,
    # where SDPA's fallback runs once per example.
    examples = xs.unsqueeze(1)                                     # [b, 1, t, e]

    def per_example(mha):
        params = tree.map(lambda p: p.to(device), mha.init(random.key(0))[0])
        loss = lambda p, xi: mha.apply(p, {}, xi, mask=causal_mask(t, device=device))[0].pow(2).mean()  # noqa: E731
        return lambda: vmap(grad(loss), in_dims=(None, 0))(params, examples)

    each = _auto_and_sdpa_times(e, h, per_example, max(3, repeats // 3))
    rows.append(_row(f"mha per-example grads vmap(grad) auto(math) B{b} T{t} E{e} ({device})", each["auto"],
                     "same with impl='sdpa' (per-example fallback)", each["sdpa"],
                     "one parameter set, one gradient per example"))
    return rows


if __name__ == "__main__":
    import sys

    for row in run(quick="--quick" in sys.argv):
        print(row)

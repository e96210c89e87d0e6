"""Training-engine benchmarks: per-example grads (vmap) vs a loop and vs Opacus (optional
``bench`` extra), an 8-member vmapped ensemble step vs 8 separate steps, remat's effect on saved activations, the peak memory
of a Transformer training step with and without ``remat`` (each in its own subprocess), and what a
``compile="split"`` Transformer step saves for its backward pass with and without ``remat``."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import warnings

import torch

from deepfn import losses, optim, random, remat, tree
from deepfn.models import MLP
from deepfn.train import (
    TrainState,
    ensemble_train_state,
    make_ensemble_train_step,
    make_train_step,
    per_example_grads,
)

try:
    from ._timing import Contender, time_interleaved
except ImportError:   # run as a file, not as a package
    from _timing import Contender, time_interleaved


def _median_time(fn, repeats: int) -> float:
    fn()                                   # warm-up (and compile)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _in_turns(fns, steps: int) -> list[float]:
    """Median seconds of each of ``fns``, warmed up (compiled) and then timed in turns
    (``_timing.time_interleaved``: five blocks each), so that the machine's drift over the
    seconds this takes falls on all of them alike; for steps of a millisecond or less."""
    contenders = []
    for fn in fns:
        fn()
        contenders.append(Contender(fn))
    time_interleaved(contenders, steps)
    return [c.figures["median_s"] for c in contenders]


def _row(group, name, deepfn_s, baseline, baseline_s, note=""):
    return {"group": group, "name": name, "deepfn_s": deepfn_s, "baseline": baseline,
            "baseline_s": baseline_s, "ratio": deepfn_s / baseline_s, "note": note}


def _per_example_setup():
    """The per-example workload: ``(model, params, x [64, 32], y [64], loss(p, xb, yb))``."""
    model = MLP(32, (64, 64), 10)
    params, _ = model.init(random.key(0))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 32, generator=g), torch.randint(0, 10, (64,), generator=g)

    def loss(p, xb, yb):
        return losses.cross_entropy(model.apply(p, {}, xb)[0], yb)
    return model, params, x, y, loss


def _per_example(repeats: int) -> dict:
    _, params, x, y, loss = _per_example_setup()
    vmapped = per_example_grads(loss)
    single = torch.func.grad(loss)
    loop = lambda: [single(params, x[i:i + 1], y[i:i + 1]) for i in range(64)]  # noqa: E731
    ours, theirs = _in_turns([lambda: vmapped(params, x, y), loop], repeats)
    return _row("train", "per_example_grads MLP(32,(64,64),10) b=64 (vmap, eager)", ours, "python loop of grad", theirs)


def _per_example_vs_opacus(repeats: int) -> dict:
    """The same per-example gradients by Opacus's ``GradSampleModule`` (hooks on an nn.Module)."""
    from deepfn import interop
    try:
        from ._workload_models import torch_mlp
    except ImportError:   # run as a file, not as a package
        from _workload_models import torch_mlp
    name = "per_example_grads MLP(32,(64,64),10) b=64 (vmap, eager) vs Opacus"
    # Opacus's hooks warn that the input needs no gradient: expected here.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    try:
        from opacus import GradSampleModule
    except ImportError:
        return {"group": "train", "name": name, "deepfn_s": None, "baseline": "opacus GradSampleModule",
                "baseline_s": None, "ratio": None, "note": "skipped: opacus not installed (pip install -e .[bench])"}
    model, params, x, y, loss = _per_example_setup()
    vmapped = per_example_grads(loss)
    module = GradSampleModule(interop.to_torch(model, params, {}, torch_mlp(model)))

    def opacus_step():
        module.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(module(x), y).backward()
        return [p.grad_sample for p in module.parameters()]

    compiled = torch.compile(vmapped, fullgraph=True)
    grads = tree.flatten(compiled(params, x, y))
    theirs = opacus_step()
    # Opacus (loss_reduction="mean") undoes the mean: grad_sample is each example's own gradient.
    agree = all(torch.allclose(grads[f"network.{n}"], t, rtol=1e-4, atol=1e-6)
                for (n, _), t in zip(module._module.named_parameters(), theirs, strict=True))
    ours, theirs, eager = _in_turns([lambda: compiled(params, x, y), opacus_step, lambda: vmapped(params, x, y)],
                                    repeats * 10)
    return _row("train", name.replace("eager", "compiled"), ours, "opacus GradSampleModule", theirs,
                f"gradients agree: {agree}; deepfn eager: {eager * 1e3:.2f} ms")


def _ensemble(steps: int, compile: bool) -> dict:
    n, model, opt = 8, MLP(32, (64,), 10), optim.adamw(lr=1e-3)
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(64, 32, generator=g), torch.randint(0, 10, (64,), generator=g))
    keys = random.split(random.key(1), n)
    stacked = ensemble_train_state(model, opt, random.key(0), n)
    ens_step = make_ensemble_train_step(model, losses.cross_entropy, opt, compile=compile)
    singles = [TrainState.create(model, opt, k) for k in random.split(random.key(0), n)]
    one_step = make_train_step(model, losses.cross_entropy, opt, compile=compile)
    mode = "compiled" if compile else "eager"
    ours, theirs = _in_turns([lambda: ens_step(stacked, batch, keys),
                              lambda: [one_step(s, batch, k) for s, k in zip(singles, keys, strict=True)]], steps)
    return _row("train", f"ensemble step n=8 MLP(32,(64,),10) b=64 (vmap, {mode})", ours, f"8 separate steps ({mode})",
                theirs)


def _remat(repeats: int) -> dict:
    depth, width = 16, 256
    g = torch.Generator().manual_seed(0)
    params = [{"w": torch.randn(width, width, generator=g) / width ** 0.5} for _ in range(depth)]
    x = torch.randn(512, width, generator=g)

    def block(p, h):
        return torch.tanh(h @ p["w"])

    def run(fn):
        leaves = tree.map(lambda t: t.clone().requires_grad_(), params)
        saved = [0]

        def pack(t):
            saved[0] += t.numel() * t.element_size()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            h = x
            for p in leaves:
                h = fn(p, h)
            loss = h.square().sum()
        loss.backward()
        return saved[0]
    plain_t = _median_time(lambda: run(block), repeats)
    remat_t = _median_time(lambda: run(remat(block)), repeats)
    plain_b, remat_b = run(block), run(remat(block))
    return _row("train", f"remat {depth}x tanh(Dense {width}) b=512 fwd+bwd (plain autograd)", remat_t,
                "no remat", plain_t, f"saved for backward: {remat_b / 2**20:.1f} MiB vs {plain_b / 2**20:.1f} MiB "
                "(saved-tensor hooks; under torch.compile the partitioner decides, measure there)")


# One eager gradient step of a Transformer in a fresh process (the train step's eager
# autograd path): peak RSS (ru_maxrss) is only honest per process, since the allocator never
# returns freed pages to a shared baseline.
_STEP_CHILD = """
import json, resource, statistics, sys, time
import torch
from deepfn import losses, random
from deepfn.models import Transformer
cfg, remat, batch, length, repeats = json.loads(sys.argv[1])
model = Transformer(**cfg, dropout=0.1, remat=remat)
params, _ = model.init(random.key(0))
src = random.randint(random.key(1), (batch, length), 1, cfg["vocab_size"])
tgt = random.randint(random.key(2), (batch, length), 1, cfg["vocab_size"])
def loss(p, key):
    logits, _ = model.apply(p, {}, src, tgt, key=key, train=True)
    return losses.cross_entropy(logits.flatten(0, 1), tgt.flatten())
from deepfn.train.autograd import autograd_grad_and_value   # what make_train_step(compile=False) runs
step = lambda p, key: autograd_grad_and_value(lambda q: (loss(q, key), None), p)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for i in range(repeats + 1):
    t0 = time.perf_counter()
    grads, value = step(params, random.key(10 + i))
    times.append(time.perf_counter() - t0)
    del grads, value
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"time": statistics.median(times[1:]), "before_kib": before, "peak_kib": peak}))
"""


def _step_in_subprocess(cfg: dict, remat_on: bool, batch: int, length: int, repeats: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = subprocess.run([sys.executable, "-c", _STEP_CHILD, json.dumps([cfg, remat_on, batch, length, repeats])],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


_SEED_CFG = dict(vocab_size=10000, d_model=512, n_heads=8, n_layers=6, d_ff=2048)


def _transformer_remat(quick: bool, batch: int = 16, length: int = 32) -> dict:
    """The 6+6-layer seed Transformer; at ``batch x length`` = 16 x 32 its activations are small
    next to its parameters' gradients, so the full run adds 32 x 64, where they are not."""
    if quick:
        cfg, batch, length, repeats = dict(vocab_size=1000, d_model=128, n_heads=4, n_layers=2, d_ff=512), 8, 16, 2
    else:
        cfg, repeats = _SEED_CFG, 3 if batch * length <= 512 else 2
    plain = _step_in_subprocess(cfg, False, batch, length, repeats)
    rem = _step_in_subprocess(cfg, True, batch, length, repeats)
    mib = lambda r, k: r[k] / 1024  # noqa: E731  (ru_maxrss is in KiB on Linux)
    note = (f"peak RSS {mib(rem, 'peak_kib'):.0f} MiB (remat) vs {mib(plain, 'peak_kib'):.0f} MiB (plain); "
            f"step's rise over the post-init peak {mib(rem, 'peak_kib') - mib(rem, 'before_kib'):.0f} vs "
            f"{mib(plain, 'peak_kib') - mib(plain, 'before_kib'):.0f} MiB (one subprocess each, the eager step's gradient)")
    name = (f"Transformer d={cfg['d_model']} L={cfg['n_layers']}+{cfg['n_layers']} b={batch} t={length} "
            "train step, remat=True")
    return _row("train", name, rem["time"], "remat=False", plain["time"], note)


def _transformer_remat_split(quick: bool) -> dict:
    """Bytes a ``make_train_step(compile="split")`` step saves for its backward pass, with and
    without ``remat``: there the compiled forward's remat regions are checkpoint regions that
    AOTAutograd recomputes. Dropout 0 halves the compile (see the README's compile times)."""
    from deepfn.models import Transformer
    if quick:
        cfg, batch, length, repeats = dict(vocab_size=500, d_model=32, n_heads=2, n_layers=2, d_ff=64), 4, 8, 2
    else:
        cfg, batch, length, repeats = dict(vocab_size=8000, d_model=256, n_heads=4, n_layers=3, d_ff=1024), 32, 64, 3
    src = random.randint(random.key(1), (batch, length), 1, cfg["vocab_size"])
    tgt = random.randint(random.key(2), (batch, length), 1, cfg["vocab_size"])
    figures = {}
    for remat_on in (False, True):
        model = Transformer(**cfg, dropout=0.0, remat=remat_on)
        opt = optim.adam(lr=1e-4)
        step = make_train_step(model, losses.cross_entropy, opt, compile="split", donate=True)
        carry = [TrainState.create(model, opt, random.key(0))]
        saved = [0]

        def pack(t, saved=saved):
            saved[0] += t.numel() * t.element_size()
            return t

        def one(step=step, carry=carry):
            carry[0], metrics = step(carry[0], ((src, tgt), tgt), None)
            return metrics
        one()   # compile
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            one()
        figures[remat_on] = (_median_time(one, repeats), saved[0])
    (plain_t, plain_b), (remat_t, remat_b) = figures[False], figures[True]
    name = (f"Transformer d={cfg['d_model']} L={cfg['n_layers']}+{cfg['n_layers']} b={batch} t={length} "
            "train step compile='split', remat=True")
    return _row("train", name, remat_t, "remat=False", plain_t,
                f"saved for backward by the compiled forward: {remat_b / 2**20:.1f} MiB vs {plain_b / 2**20:.1f} MiB "
                "(saved-tensor hooks on AOTAutograd's function; dropout 0)")


def run(quick: bool = False) -> list[dict]:
    repeats = 3 if quick else 20
    # Steps of a millisecond or less: many calls, timed in turns, or a second's drift decides.
    rows = [_per_example(repeats), _per_example_vs_opacus(repeats), _ensemble(repeats * 10, compile=False)]
    if not quick:
        rows.append(_ensemble(repeats * 25, compile=True))
    rows.append(_remat(repeats))
    rows.append(_transformer_remat(quick))
    rows.append(_transformer_remat_split(quick))
    if not quick:
        rows.append(_transformer_remat(False, batch=32, length=64))
    return rows


if __name__ == "__main__":
    import sys
    for r in run(quick="--quick" in sys.argv):
        if r["ratio"] is None:
            print(f"{r['name']}: {r['note']}")
            continue
        print(f"{r['name']}: deepfn {r['deepfn_s'] * 1e3:.2f} ms vs {r['baseline']} {r['baseline_s'] * 1e3:.2f} ms "
              f"(ratio {r['ratio']:.3f}) {r['note']}")

"""Model workloads: one full training step of the seed's models, deepfn against nn.Module and JAX.

Workloads (fixed seeds, synthetic data, the seed's optimizers):

| name | model | batch | optimizer |
| --- | --- | --- | --- |
| mlp-seed | MLP 10->[64,32,16]->5, batch norm, dropout 0.2 | 32 | Adam 1e-3, wd 1e-4, clip 1.0 |
| mlp-wide | MLP 784->[1024,1024]->10 | 256 | Adam 1e-3 |
| cnn-seed | AdvancedCNN base 64, blocks [2,2,2,2], SE, 32x32 | 128 | AdamW 1e-3, wd 0.01 |
| cnn-small | AdvancedCNN base 16, blocks [1,1,1,1], SE, 32x32 | 128 | AdamW 1e-3, wd 0.01 |
| transformer-small | enc-dec, vocab 8000, d 256, 4 heads, 3+3 layers, ff 1024, len 32 | 64 | Adam 1e-4 (0.9, 0.98), clip 1.0, smoothing 0.1 |
| transformer-seed | vocab 10000, d 512, 8 heads, 6+6 layers, ff 2048, len 32 | 16 | as transformer-small |

Contenders: deepfn ``make_train_step(compile=False)`` / ``(compile=True)`` / ``(compile="split")``,
all with ``donate=True`` (``torch.optim`` updates in place too); the torch twin
(``_workload_models``, loaded with deepfn's initial weights through ``deepfn.interop``) with
``torch.optim`` eagerly and under ``torch.compile(module)``; Flax+Optax under ``jax.jit``
(``_flax_models``) when the ``bench`` extra is installed; bf16 (``amp.Policy`` compute bfloat16, eager
and compiled, against eager ``torch.autocast("cpu", torch.bfloat16)``) for the CNNs and Transformers.
The contenders of one comparison are started one after another (cold compiles, each into its own
fresh cache) and then timed in turns (``_timing``), so the machine's drift falls on all of them;
the matmul peak behind each row's share is measured right before and after those timings.

Quick mode runs mlp-seed, mlp-wide, cnn-small and transformer-small with few steps. Pick
workloads with ``run(quick, only="mlp-seed,cnn-seed")`` or ``DEEPFN_BENCH_WORKLOADS``, and
comparisons with ``DEEPFN_BENCH_CONTENDERS`` (a comma-separated subset of ``eager, compiled,
bf16, jax``; e.g. ``compiled`` for the compile-time rows alone).

``DEEPFN_BENCH_DEVICE`` (default ``cpu``) runs the workloads on another device, e.g. ``cuda``:
models, batches and keys live there, every timed step ends with a synchronization, the step
counts are five times larger (steps take milliseconds there), the peaks are measured there
with 8192-wide products, and JAX is left out (its runner is CPU-only).
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from deepfn import amp, interop, losses, optim, random
from deepfn.models import MLP, AdvancedCNN, Transformer
from deepfn.train import TrainState, make_train_step

try:
    from ._timing import (
        clear_in_memory_compile_caches,
        cold_cache,
        start,
        time_interleaved,
        warm_start,
    )
    from ._workload_models import Seq2SeqTransformer, SEResNet, torch_mlp
except ImportError:   # run as a file (python scripts/bench_parts/workloads.py), not as a package
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _timing import (
        clear_in_memory_compile_caches,
        cold_cache,
        start,
        time_interleaved,
        warm_start,
    )
    from _workload_models import Seq2SeqTransformer, SEResNet, torch_mlp

GROUP = "workloads"
QUICK = ("mlp-seed", "mlp-wide", "cnn-small", "transformer-small")
ENV = "DEEPFN_BENCH_WORKLOADS"
CONTENDERS_ENV = "DEEPFN_BENCH_CONTENDERS"
CONTENDERS = ("eager", "compiled", "bf16", "jax")
DEVICE_ENV = "DEEPFN_BENCH_DEVICE"
BF16 = amp.Policy(torch.float32, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class Workload:
    name: str
    model: object
    batch: int
    steps: int            # timed steps in full mode (quick mode: steps // 5, at least 2)
    deepfn_opt: Callable[[], object]
    torch_opt: Callable[[object], torch.optim.Optimizer]
    clip: float | None = None
    label_smoothing: float = 0.0
    in_shape: tuple[int, ...] = ()
    seq_len: int = 0


def _adam(**kw):
    return lambda: optim.adam(**kw), lambda p: torch.optim.Adam(p, **kw)


def _adamw(**kw):
    return lambda: optim.adamw(**kw), lambda p: torch.optim.AdamW(p, **kw)


_T_OPT = _adam(lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
WORKLOADS = {w.name: w for w in [
    Workload("mlp-seed", MLP(10, (64, 32, 16), 5, dropout_rate=0.2, batch_norm=True), 32, 100,
             *_adam(lr=1e-3, weight_decay=1e-4), clip=1.0, in_shape=(10,)),
    Workload("mlp-wide", MLP(784, (1024, 1024), 10), 256, 50, *_adam(lr=1e-3), in_shape=(784,)),
    Workload("cnn-seed", AdvancedCNN(3, 10, 64, (2, 2, 2, 2)), 128, 10,
             *_adamw(lr=1e-3, weight_decay=0.01), in_shape=(3, 32, 32)),
    Workload("cnn-small", AdvancedCNN(3, 10, 16, (1, 1, 1, 1)), 128, 20,
             *_adamw(lr=1e-3, weight_decay=0.01), in_shape=(3, 32, 32)),
    Workload("transformer-small", Transformer(8000, 256, 4, 3, 1024), 64, 10, *_T_OPT, clip=1.0,
             label_smoothing=0.1, seq_len=32),
    Workload("transformer-seed", Transformer(10000, 512, 8, 6, 2048), 16, 10, *_T_OPT, clip=1.0,
             label_smoothing=0.1, seq_len=32),
]}


def bench_device() -> torch.device:
    """``$DEEPFN_BENCH_DEVICE``, else the CPU."""
    device = torch.device(os.environ.get(DEVICE_ENV) or "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{DEVICE_ENV}={device}: CUDA is not available here")
    return device


def synchronized(one_step: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """``one_step`` that returns only once the device has finished its work (timings then count
    the kernels, not their launch)."""
    if device.type == "cpu":
        return one_step

    def step():
        out = one_step()
        torch.accelerator.synchronize(device)
        return out

    return step


def make_batch(wl: Workload) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Synthetic ``(inputs, labels)`` from a fixed seed, on the bench device; token ids avoid
    the pad id 0."""
    g, device = torch.Generator().manual_seed(0), bench_device()
    if isinstance(wl.model, Transformer):
        ids = lambda: torch.randint(1, wl.model.vocab_size, (wl.batch, wl.seq_len), generator=g).to(device)  # noqa: E731
        return (ids(), ids()), ids()
    classes = wl.model.output_dim if isinstance(wl.model, MLP) else wl.model.num_classes
    x = torch.randn(wl.batch, *wl.in_shape, generator=g)
    return (x.to(device),), torch.randint(0, classes, (wl.batch,), generator=g).to(device)


def twin_of(wl: Workload) -> torch.nn.Module:
    """The torch twin holding deepfn's initial weights (``random.key(0)``), in train mode."""
    m = wl.model
    twin = torch_mlp(m) if isinstance(m, MLP) else SEResNet(m) if isinstance(m, AdvancedCNN) else Seq2SeqTransformer(m)
    params, state = m.init(random.key(0))
    return interop.to_torch(m, params, state, twin).to(bench_device()).train()


def _torch_loss(wl: Workload, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           label_smoothing=wl.label_smoothing)


def deepfn_runner(wl: Workload, *, compile: bool | str, policy: amp.Policy | None = None,
                  donate: bool = True, compile_cache: str | None = None) -> Callable[[], torch.Tensor]:
    """``one_step()``: one deepfn update on the fixed batch, carrying the train state.

    ``donate=True`` (every contender here) updates params and optimizer state in their
    buffers, as ``torch.optim`` updates the twin's and as the training scripts do; the pure
    step writes fresh buffers for every parameter and both Adam moments each step (measured,
    timed in turns: the whole-graph mlp-wide step 14.2 / 13.8 ms donated against 16.2 / 16.5 ms
    pure; the eager one 17.1 against 18.6 ms, eager mlp-seed 2.06 against 2.14 ms).
    """
    inputs, labels = make_batch(wl)
    opt = wl.deepfn_opt()
    loss_fn = functools.partial(losses.cross_entropy, label_smoothing=wl.label_smoothing)
    step = make_train_step(wl.model, loss_fn, opt, policy=policy, clip_norm=wl.clip, compile=compile, donate=donate,
                           compile_cache=compile_cache)
    device = bench_device()
    carry = [TrainState.create(wl.model, opt, random.key(0).to(device), policy=policy), 0]
    keys = random.split(random.key(1).to(device), 16).unbind(0)   # dropout keys, cycled (split once, not per step)
    batch = (inputs if len(inputs) > 1 else inputs[0], labels)

    def one_step():
        ts, i = carry
        carry[0], metrics = step(ts, batch, keys[i % len(keys)])
        carry[1] = i + 1
        return metrics["loss"]

    return synchronized(one_step, device)


def torch_runner(wl: Workload, *, compile: bool, bf16: bool = False) -> Callable[[], torch.Tensor]:
    """``one_step()``: zero_grad, forward (autocast bf16 if asked), backward, clip, ``opt.step()``."""
    inputs, labels = make_batch(wl)
    twin = twin_of(wl)
    forward = torch.compile(twin) if compile else twin
    opt = wl.torch_opt(twin.parameters())
    device = bench_device()

    def one_step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            logits = forward(*inputs)
        loss = _torch_loss(wl, logits, labels)
        loss.backward()
        if wl.clip is not None:
            torch.nn.utils.clip_grad_norm_(twin.parameters(), wl.clip)
        opt.step()
        return loss.detach()

    return synchronized(one_step, device)


def flax_runner(wl: Workload) -> Callable[[], object]:
    import optax
    try:
        from . import _flax_models
    except ImportError:
        import _flax_models
    m, (inputs, labels) = wl.model, make_batch(wl)
    parts = [optax.clip_by_global_norm(wl.clip)] if wl.clip else []
    kw = wl.torch_opt(torch.nn.Linear(1, 1).parameters()).defaults   # the seed's hyper-parameters
    if kw["weight_decay"]:
        parts.append(optax.add_decayed_weights(kw["weight_decay"]))      # torch Adam's L2 term
    parts.append(optax.adam(kw["lr"], *kw["betas"], eps=kw["eps"]))
    tx = optax.chain(*parts)
    if isinstance(m, MLP):
        return _flax_models.mlp_runner(twin_of(wl), m.hidden_dims, m.output_dim, m.dropout_rate, m.batch_norm,
                                       tx, inputs[0], labels)
    if isinstance(m, AdvancedCNN):
        return _flax_models.cnn_runner(m.base_channels, m.num_blocks, m.num_classes, m.stem == "imagenet",
                                       m.dropout_rate, tx, inputs[0], labels)
    return _flax_models.transformer_runner(m.vocab_size, m.d_model, m.n_heads, m.n_layers, m.d_ff, m.dropout,
                                           m.max_seq_len, tx, *inputs, labels, wl.label_smoothing)


def step_flops(wl: Workload) -> int:
    """FLOPs of one eager nn.Module step (forward + backward), by ``FlopCounterMode``."""
    inputs, labels = make_batch(wl)
    twin = twin_of(wl)
    with FlopCounterMode(display=False) as counter:
        _torch_loss(wl, twin(*inputs), labels).backward()
    return counter.get_total_flops()


def matmul_peak(dtype: torch.dtype, n: int | None = None, repeats: int = 10) -> float:
    """FLOP/s of a large ``torch.mm`` in ``dtype`` on the bench device: its practical matmul
    peak (``n`` = 2048 on the CPU, 8192 elsewhere).

    The best of ``repeats`` after three warm-up products: fewer (a first run measured 123
    GFLOP/s fp32 where training steps then reached 163) understate the peak while the
    threads and caches warm up.
    """
    device = bench_device()
    n = n or (2048 if device.type == "cpu" else 8192)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device, dtype) for _ in range(2))
    product = synchronized(lambda: torch.mm(a, b), device)
    times = []
    for i in range(3 + repeats):
        t0 = time.perf_counter()
        product()
        spent = time.perf_counter() - t0
        if i >= 3 or spent > 2.0:
            times.append(spent)
        if spent > 2.0:
            break   # an emulated type (bf16 on a CPU without bf16 units: 18 s a product): warm-up is moot
    return 2 * n ** 3 / min(times)


def time_with_peak(contenders: list, steps: int, dtype: torch.dtype) -> float:
    """Time ``contenders`` in turns (``time_interleaved``) and return the ``dtype`` matmul peak
    measured right before and right after them, the higher of the two.

    This shared machine's speed drifts by up to 2x within an hour, so a peak measured once at
    the start of a run would misstate the share of steps timed later; the higher of the two
    readings keeps the share on the low side.
    """
    before = matmul_peak(dtype)
    time_interleaved(contenders, steps)
    return max(before, matmul_peak(dtype))


def _figures(prefix: str, t: dict, wl: Workload, flops: int, peak: float) -> dict:
    rate = flops / t["median_s"]
    out = {f"{prefix}compile_s": t["first_s"], f"{prefix}min_s": t["min_s"],
           f"{prefix}samples_s": wl.batch / t["median_s"], f"{prefix}gflops": rate / 1e9,
           f"{prefix}peak_share": rate / peak, f"{prefix}rss_mib": t["rss_mib"]}
    for name in ("warm_start_s", "saved_start_s"):
        if name in t:
            out[f"{prefix}{name}"] = t[name]
    if "compile_phases" in t:
        out[f"{prefix}compile_phases"] = t["compile_phases"]
    return out


def _row(wl, mode, ours, base_name, base, flops, peak, note) -> dict:
    row = {"group": GROUP, "name": f"{wl.name} train step ({mode})", "deepfn_s": ours["median_s"],
           "baseline": base_name, "baseline_s": None if base is None else base["median_s"],
           "ratio": None if base is None else ours["median_s"] / base["median_s"], "note": note,
           "batch": wl.batch, "step_gflop": flops / 1e9, "peak_gflops": peak / 1e9}
    row.update(_figures("", ours, wl, flops, peak))
    if base is not None:
        row.update(_figures("baseline_", base, wl, flops, peak))
    return row


def _saved_start(wl: Workload, cache_dir: str | None, **step_options: Any) -> float:
    """Seconds of a fresh process's first call of a compiled deepfn step with ``compile_cache``:
    one step compiles (Inductor's on-disk cache ``cache_dir`` is warm by now) and saves itself,
    then in-memory state is dropped and a new step loads the file instead of tracing."""
    directory = tempfile.mkdtemp(prefix="deepfn-bench-saved-steps-")
    warm_start(lambda: deepfn_runner(wl, compile_cache=directory, **step_options), cache_dir)
    return warm_start(lambda: deepfn_runner(wl, compile_cache=directory, **step_options), cache_dir)


def _compile_note(*ts: dict) -> str:
    hits = sum(t.get("cache_hits", 0) for t in ts)
    saved = "".join(f"; deepfn with compile_cache (the saved step loaded): {t['saved_start_s']:.1f} s"
                    for t in ts if "saved_start_s" in t)
    return (f"compile_s = first call incl. compile ({'warm' if hits else 'cold'} on-disk cache: "
            f"{hits} FX-graph cache hits); warm start (deepfn / baseline): "
            + " / ".join(f"{t['warm_start_s']:.1f} s" for t in ts if "warm_start_s" in t) + saved)


def bench_workload(wl: Workload, steps: int, contenders: tuple[str, ...] = CONTENDERS) -> list[dict]:
    """The rows of one workload; ``contenders`` picks the comparisons to run. The contenders of
    one comparison are timed in turns, between two measurements of the matmul peak
    (``time_with_peak``), whose higher reading is the row's ``peak_gflops``."""
    flops = step_flops(wl)
    rows = []
    if "eager" in contenders:
        ours = start(lambda: deepfn_runner(wl, compile=False), False)
        base = start(lambda: torch_runner(wl, compile=False), False)
        peak = time_with_peak([ours, base], steps, torch.float32)
        rows.append(_row(wl, "eager fp32", ours.figures, "nn.Module + torch.optim eager", base.figures, flops,
                         peak, "deepfn compile=False, donate=True; peak RSS is the process's running maximum "
                         "(getrusage)"))
    if "compiled" in contenders or "jax" in contenders:
        rows += _compiled_rows(wl, steps, flops, contenders)
    if "bf16" in contenders and not isinstance(wl.model, MLP):
        rows += _bf16_rows(wl, steps, flops, "compiled" in contenders)
    return rows


def _compiled_rows(wl: Workload, steps: int, flops: int, contenders: tuple[str, ...]) -> list[dict]:
    """deepfn's compiled step (and split step) against ``torch.compile(nn.Module)`` and Flax:
    compiled one after another, timed in turns, then their warm and saved starts."""
    clear_in_memory_compile_caches()   # no compiled frames of earlier workloads
    torch_too = "compiled" in contenders
    split_too = torch_too   # the mode that compiles what torch.compile(nn.Module) compiles
    jax_too = "jax" in contenders and jax_available()
    if not torch_too and not jax_too:
        return [_jax_skipped_row(wl)]
    ours = start(lambda: deepfn_runner(wl, compile=True), True)
    split = start(lambda: deepfn_runner(wl, compile="split"), True) if split_too else None
    base = start(lambda: torch_runner(wl, compile=True), True) if torch_too else None
    flax = start(lambda: flax_runner(wl), False) if jax_too else None
    peak = time_with_peak([c for c in (ours, split, base, flax) if c is not None], steps, torch.float32)
    rows = []
    if torch_too:
        ours.figures["warm_start_s"] = warm_start(lambda: deepfn_runner(wl, compile=True),
                                                  ours.cache_dir)
        ours.figures["saved_start_s"] = _saved_start(wl, ours.cache_dir, compile=True)
        base.figures["warm_start_s"] = warm_start(lambda: torch_runner(wl, compile=True), base.cache_dir)
        rows.append(_row(wl, "compiled fp32", ours.figures, "torch.compile(nn.Module) + torch.optim", base.figures,
                         flops, peak, "deepfn compile=True, donate=True; " + _compile_note(ours.figures, base.figures)))
    if split is not None:
        split.figures["warm_start_s"] = warm_start(lambda: deepfn_runner(wl, compile="split"),
                                                   split.cache_dir)
        split.figures["saved_start_s"] = _saved_start(wl, split.cache_dir, compile="split")
        rows.append(_row(wl, "compiled split fp32", split.figures, "torch.compile(nn.Module) + torch.optim",
                         base.figures, flops, peak, "deepfn compile='split', donate=True (forward+backward by "
                         "AOTAutograd, the update eager in-place foreach); "
                         + _compile_note(split.figures, base.figures)))
    if "jax" in contenders:
        rows.append(_jax_skipped_row(wl) if flax is None else _row(
            wl, "compiled vs jax", ours.figures, "Flax + Optax jax.jit", flax.figures, flops, peak,
            "deepfn compile=True, donate=True vs jax.jit; baseline compile_s = first jitted call"))
    return rows


def _jax_skipped_row(wl: Workload) -> dict:
    return {"group": GROUP, "name": f"{wl.name} train step (compiled vs jax)", "deepfn_s": None,
            "baseline": "Flax + Optax jax.jit", "baseline_s": None, "ratio": None,
            "note": "skipped: jax not installed (pip install -e .[bench])"}


def _bf16_rows(wl: Workload, steps: int, flops: int, compiled_too: bool) -> list[dict]:
    """deepfn's bf16 policy, eager and compiled, against eager autocast, timed in turns."""
    clear_in_memory_compile_caches()
    compiled = start(lambda: deepfn_runner(wl, compile=True, policy=BF16), True) if compiled_too else None
    ours = start(lambda: deepfn_runner(wl, compile=False, policy=BF16), False)
    base = start(lambda: torch_runner(wl, compile=False, bf16=True), False)
    peak = time_with_peak([c for c in (ours, base, compiled) if c is not None], steps, torch.bfloat16)
    autocast = f"nn.Module + torch.autocast('{bench_device().type}', bfloat16)"
    rows = [_row(wl, "eager bf16", ours.figures, autocast, base.figures, flops, peak,
                 "deepfn amp.Policy compute bfloat16, donate=True; share of the bf16 mm peak")]
    if compiled is not None:
        rows.append(_row(wl, "compiled bf16", compiled.figures, autocast, base.figures, flops, peak,
                         "deepfn compile=True, donate=True, amp.Policy compute bfloat16, against the eager autocast step; "
                         "share of the bf16 mm peak"))
    return rows


def jax_available() -> bool:
    try:
        import flax  # noqa: F401
        import jax  # noqa: F401
        import optax  # noqa: F401
    except ImportError:
        return False
    return True


def selected(quick: bool, only: str | None = None) -> list[str]:
    """Workload names: ``only`` (comma-separated), else ``$DEEPFN_BENCH_WORKLOADS``, else the mode's set."""
    chosen = only or os.environ.get(ENV, "")
    names = [n.strip() for n in chosen.split(",") if n.strip()] or list(QUICK if quick else WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ValueError(f"bench workloads: unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    return names


def selected_contenders() -> tuple[str, ...]:
    """``$DEEPFN_BENCH_CONTENDERS`` (comma-separated), else every contender."""
    names = tuple(n.strip() for n in os.environ.get(CONTENDERS_ENV, "").split(",") if n.strip())
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        raise ValueError(f"{CONTENDERS_ENV}: unknown contender(s) {unknown}; choose from {list(CONTENDERS)}")
    return names or CONTENDERS


def _pay_once_per_process_compile_costs() -> None:
    """Compile a tiny function first, so the first contender's cold compile is not also charged
    what a process pays once whatever it compiles: Inductor probing the CPU's vector ISAs by
    building test programs (~8 s measured on a 2-core AVX-512 machine, cached for the process),
    and importing the compiler's modules."""
    cold_cache()
    torch.compile(lambda x: (x.sin() * 2.0).sum(), fullgraph=True)(torch.ones(64, device=bench_device()))
    clear_in_memory_compile_caches()


def run(quick: bool = False, only: str | None = None) -> list[dict]:
    contenders = selected_contenders()
    device = bench_device()
    if device.type != "cpu":
        contenders = tuple(c for c in contenders if c != "jax")
    if "compiled" in contenders:
        _pay_once_per_process_compile_costs()
    rows = []
    for name in selected(quick, only):
        wl = WORKLOADS[name]
        steps = max(2, wl.steps // 5) if quick else wl.steps
        done = bench_workload(wl, steps if device.type == "cpu" else 5 * steps, contenders)
        for r in done:   # as they come: a run stopped by a time limit still leaves its finished rows
            print(f"[bench] {_summary(r)}", file=sys.stderr, flush=True)
        rows += done
    where = f"{torch.get_num_threads()} threads" if device.type == "cpu" else f"on {device}"
    for r in rows:
        if "peak_gflops" in r:
            kind = "bf16" if "bf16" in r["name"] else "fp32"
            r["note"] += (f"; {kind} mm peak {r['peak_gflops']:.0f} GFLOP/s (the higher of two readings, "
                          f"right before and after these timings)")
        r["note"] += f"; {where}"
    return rows


def _summary(r: dict) -> str:
    if r["deepfn_s"] is None:
        return f"{r['name']}: {r['note']}"
    base = "skipped" if r["baseline_s"] is None else f"{r['baseline_s'] * 1e3:.2f} ms (ratio {r['ratio']:.3f})"
    return (f"{r['name']}: deepfn {r['deepfn_s'] * 1e3:.2f} ms vs {r['baseline']} {base}; "
            f"{r['gflops']:.1f} GFLOP/s, first call {r['compile_s']:.1f} s")


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(f"{_summary(r)}; {r['note']}")

"""Benchmark: sharded data parallel over N = 1, 2, 4 gloo processes, deepfn's
``make_train_step(sharding=...)`` vs ``torch.distributed.fsdp.fully_shard`` (FSDP2).

``run()`` launches this file (``--worker``) under torchrun once per world size. Each launch
trains ``MLP(784, [1024, 1024], 10)`` with AdamW on a global batch of 256 and reports:

- ``shard full``: deepfn ``sharding="full"`` (eager, donated) vs FSDP2 (each Linear and the
  root ``fully_shard``-ed, ``torch.optim.AdamW``), the same model, batch and world size;
- ``shard optimizer``: deepfn ``sharding="optimizer"`` vs the same FSDP2 step;
- ``shard full compiled`` (N = 2 only): ``compile=True``, which gathers one unit at a time
  inside its compiled forward and backward graphs
  (:mod:`deepfn.distributed.shard_gather_compiled`), with the largest difference from the
  eager sharded step's parameters after 3 steps in the note; ``shard full compiled all at
  once``: the same with ``per_unit=False`` (every parameter gathered before the graph);
- ``shard full peak bytes`` (no timing): per rank, the bytes held between steps plus the
  peak of one step above them (the profiler's allocations matched with their frees by
  address, in every thread; the least of 5 steps, as gloo's threads allocate too, at
  moments that vary), for ``"full"`` gathering everything at once (``per_unit=False``),
  gathering one unit at a time (the default), both eager and compiled, and FSDP2, on the
  bench's MLP and on ``MLP(784, [512] * 8, 10)``, batch 64.

Notes give the per-rank bytes held between steps, measured from the tensors themselves:
deepfn's params and optimizer state (its gradients are 1/N chunks after the reduce-scatter;
inside a step the gathered parameters and the whole gradients of this rank's backward exist
too), FSDP2's local shards of params, gradients and optimizer state (``to_local()``).
Each pair is timed in turns, every call started together on all ranks. Quick mode:
``MLP(784, [256], 10)``, batch 64, N = 1, 2, fewer repeats.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from bench_parts._torchrun import launch, medians, mlp_workload, torch_mlp, write_rows

from deepfn.testing import allocated

BLOCKS = 5   # turns per contender (time_interleaved)


def _local_bytes(tensors) -> int:
    total = 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total


def _kb(b: int) -> str:
    return f"{b / 1024:.0f} KiB"


def _fsdp2_twin(dims, x, y, keep_grads: bool = False):
    """``(step, module, optimizer)``: FSDP2 on ``torch_mlp(dims)`` (each Linear and the root
    ``fully_shard``-ed) with ``torch.optim.AdamW``; ``step()`` trains on ``(x, y)`` once; with
    ``keep_grads`` the sharded gradients stay between steps (to be measured)."""
    from torch import nn
    from torch.distributed.fsdp import fully_shard
    twin = torch_mlp(dims)
    for layer in twin:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(twin)
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=1e-3)

    def step():
        twin_opt.zero_grad(set_to_none=not keep_grads)
        nn.functional.cross_entropy(twin(x), y).backward()
        twin_opt.step()
    return step, twin, twin_opt


def _opt_bytes(twin_opt) -> int:
    return _local_bytes(v for s in twin_opt.state.values() for v in s.values() if isinstance(v, torch.Tensor))


def _peak_rows(quick: bool) -> list[dict]:
    """Per-rank peak bytes of one step (state held between steps + the step's peak above it)
    for deepfn ``"full"`` gathering all at once, gathering per unit, and FSDP2 (each Linear
    ``fully_shard``-ed), on the bench's MLP and on a deeper one."""
    from deepfn import distributed, losses, models, optim, random, tree
    from deepfn.distributed.sharded_state import shard_bytes
    from deepfn.train import TrainState
    from deepfn.train.sharded import build_sharded_train_step

    r, n = distributed.rank(), distributed.world_size()
    shapes = [[256]] if quick else [[1024, 1024], [512] * 8]
    rows = []
    for hidden in shapes:
        global_batch = 64
        model, opt = models.MLP(784, hidden, 10), optim.adamw(1e-3)
        full = TrainState.create(model, opt, random.key(0))
        k_x, k_y = random.split(random.fold_in(random.key(1), r))
        x, y = random.normal(k_x, (global_batch // n, 784)), random.randint(k_y, (global_batch // n,), 0, 10)
        figures = {}
        for label, per_unit, compile in (("all at once", False, False), ("per unit", True, False),
                                         ("compiled all at once", False, True), ("compiled per unit", True, True)):
            step = build_sharded_train_step(model, losses.cross_entropy, opt, "full", donate=True, per_unit=per_unit,
                                            compile=compile)
            box = {"ts": distributed.shard(full, "full")}

            def ours(step=step, box=box, x=x, y=y):
                box["ts"], _ = step(box["ts"], (x, y), None)
            ours()
            held = shard_bytes(box["ts"])
            figures[label] = held["params"] + held["opt_state"] + allocated(ours, repeats=5)[0]
        dims = [784, *hidden, 10]
        theirs, twin, twin_opt = _fsdp2_twin(dims, x, y)
        theirs()
        figures["FSDP2"] = _local_bytes(twin.parameters()) + _opt_bytes(twin_opt) + allocated(theirs, repeats=5)[0]
        whole = _local_bytes(tree.leaves(full.params))
        rows.append(dict(group="shard", name=f"shard full peak bytes gloo x{n}, MLP{dims}, batch {global_batch}",
                         deepfn_s=None, baseline="torch FSDP2 fully_shard + AdamW", baseline_s=None, ratio=None,
                         note="per-rank peak of a step (held + profiler peak above it): " + ", ".join(
                             f"{k} {_kb(v)}" for k, v in figures.items()) + f"; whole params {_kb(whole)}",
                         peaks=figures))
    return rows


def _worker(quick: bool, out_dir: Path) -> None:
    from deepfn import distributed, losses, random, tree
    from deepfn.distributed.sharded_state import shard_bytes
    from deepfn.train import TrainState, make_train_step

    w = mlp_workload(quick, timeout=300)
    n, model, opt, x, y, dims, global_batch = w.world, w.model, w.optimizer, w.x, w.y, w.dims, w.global_batch
    repeats, warmup = (5, 2) if quick else (20, 3)
    full = TrainState.create(model, opt, random.key(0))
    whole = {"params": _local_bytes(tree.leaves(full.params)), "opt_state": _local_bytes(
        [t for t in tree.leaves(full.opt_state) if isinstance(t, torch.Tensor)])}

    theirs, twin, twin_opt = _fsdp2_twin(dims, x, y, keep_grads=True)   # keep the sharded grads to measure them
    theirs()
    fsdp = {"params": _local_bytes(twin.parameters()), "grads": _local_bytes(p.grad for p in twin.parameters()),
            "opt_state": _opt_bytes(twin_opt)}
    fsdp_note = (f"FSDP2 per rank: params {_kb(fsdp['params'])}, grads {_kb(fsdp['grads'])}, "
                 f"opt {_kb(fsdp['opt_state'])}")
    rows = []
    for sharding in ("full", "optimizer"):
        step = make_train_step(model, losses.cross_entropy, opt, sharding=sharding, compile=False, donate=True)
        box = {"ts": distributed.shard(full, sharding)}

        def ours(step=step, box=box):
            box["ts"], _ = step(box["ts"], (x, y), None)

        held = shard_bytes(box["ts"])
        t_ours, t_theirs = medians([ours, theirs], repeats, warmup, BLOCKS)
        rows.append(dict(
            group="shard", name=f"shard {sharding} gloo x{n}, MLP{dims}, batch {global_batch}", deepfn_s=t_ours,
            baseline="torch FSDP2 fully_shard + AdamW", baseline_s=t_theirs, ratio=t_ours / t_theirs,
            note=(f"eager; whole: params {_kb(whole['params'])}, opt {_kb(whole['opt_state'])}; deepfn per rank: "
                  f"params {_kb(held['params'])}, opt {_kb(held['opt_state'])}, grads after reduce-scatter "
                  f"{_kb(held['params'] if sharding == 'full' else whole['params'] // n)}; {fsdp_note}")))
    if n == 2:
        rows += _compiled_rows(w, full, theirs, repeats, warmup)
    rows += _peak_rows(quick)
    write_rows(out_dir, rows)
    distributed.shutdown()


def _compiled_rows(w, full, theirs, repeats: int, warmup: int) -> list[dict]:
    """``"full"`` compiled, gathering one unit at a time in its graphs and (``per_unit=False``)
    everything before them, each against FSDP2 in turns; the note of the first gives the
    largest difference from the eager step's parameters after 3 steps from the same shards."""
    from deepfn import distributed, losses, tree
    from deepfn.train.sharded import build_sharded_train_step

    n, model, opt, x, y, dims, global_batch = w.world, w.model, w.optimizer, w.x, w.y, w.dims, w.global_batch
    kinds = {"per unit": (True, True), "all at once": (True, False), "eager": (False, True)}
    steps = {k: build_sharded_train_step(model, losses.cross_entropy, opt, "full", compile=c, per_unit=p)
             for k, (c, p) in kinds.items()}
    boxes = {k: {"ts": distributed.shard(full, "full")} for k in kinds}

    def runner(k):
        def one():
            boxes[k]["ts"], _ = steps[k](boxes[k]["ts"], (x, y), None)
        return one

    for _ in range(3):   # the same three steps from the same shards, compiled and eager
        for k in kinds:
            runner(k)()
    rows = []
    for k, name in (("per unit", "shard full compiled"), ("all at once", "shard full compiled all at once")):
        diff = max((a - b).abs().max().item() for a, b in zip(
            tree.leaves(boxes[k]["ts"].params), tree.leaves(boxes["eager"]["ts"].params), strict=True))
        t_ours, t_theirs = medians([runner(k), theirs], repeats, warmup, BLOCKS)
        how = ("each unit gathered in the compiled graphs where read, again in backward, its gradient "
               "reduce-scattered there" if k == "per unit" else "every parameter gathered before the graph")
        rows.append(dict(
            group="shard", name=f"{name} gloo x{n}, MLP{dims}, batch {global_batch}", deepfn_s=t_ours,
            baseline="torch FSDP2 fully_shard + AdamW", baseline_s=t_theirs, ratio=t_ours / t_theirs,
            note=f"compile=True ({how}; the update compiled); "
                 f"max |compiled - eager| of the params after 3 steps: {diff:.1e}"))
    return rows


def run(quick: bool = False) -> list[dict]:
    return [row for n in ((1, 2) if quick else (1, 2, 4)) for row in launch("shard", n, quick, timeout=1800)]


if __name__ == "__main__":
    if "--peaks" in sys.argv:   # only the peak rows, printed by rank 0 (under torchrun)
        from deepfn import distributed as _d
        _d.init("gloo", timeout=300)
        for row in _peak_rows("--quick" in sys.argv):
            if _d.rank() == 0:
                print(json.dumps(row["peaks"]), row["name"])
        _d.shutdown()
    elif "--worker" in sys.argv:
        _worker("--quick" in sys.argv, Path(sys.argv[sys.argv.index("--worker") + 1]))
    else:
        for row in run(quick="--quick" in sys.argv):
            print(row)

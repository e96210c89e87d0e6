"""Benchmark: 2-process gloo data parallelism, deepfn vs ``torch.nn.parallel.DistributedDataParallel``.

``run()`` launches two CPU processes with torchrun on 127.0.0.1 (this file, ``--worker``).
Rows:
- ``train_step``: one AdamW update of ``MLP(784, [1024, 1024], 10)`` on a global batch of
  256 (128 per rank): deepfn's ``make_train_step(all_reduce=all_reduce_mean, compile=False,
  donate=True)``
  vs a DDP-wrapped ``nn.Sequential`` twin (``zero_grad``, forward, ``backward``, ``step``).
- ``train_step without all-reduce``: the same two steps with no communication (each rank
  alone, both ranks busy), to separate the step's own cost from the communication's.
- ``all_reduce``: ``all_reduce_mean`` of that gradient tree (25 MiB buckets) vs one
  ``dist.all_reduce`` of a flat tensor of the same size; the note gives MB/s (payload bytes
  per second of wall time).
Each pair is timed in turns (alternating blocks), every call started together on both ranks.
Quick mode: ``MLP(784, [256], 10)``, global batch 64, fewer repeats.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from bench_parts._torchrun import launch, medians, mlp_workload, torch_mlp, write_rows

BLOCKS = 10   # turns per contender (time_interleaved)


def _worker(quick: bool, out_dir: Path) -> None:
    import torch.distributed as dist
    from torch import nn

    from deepfn import distributed, losses, random, tree
    from deepfn.train import TrainState, make_train_step

    w = mlp_workload(quick, timeout=120)
    n, model, opt, x, y, dims, global_batch = w.world, w.model, w.optimizer, w.x, w.y, w.dims, w.global_batch
    repeats, warmup = (5, 2) if quick else (60, 3)
    local = global_batch // n
    ts = distributed.broadcast(TrainState.create(model, opt, random.key(0)))
    # donate=True: params and moments updated in place, as torch.optim does for the twin.
    step = make_train_step(model, losses.cross_entropy, opt, all_reduce=distributed.all_reduce_mean, compile=False,
                           donate=True)
    box = {"ts": ts}

    def ours():
        box["ts"], _ = step(box["ts"], (x, y), None)

    twin = nn.parallel.DistributedDataParallel(torch_mlp(dims))
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=1e-3)

    def theirs():
        twin_opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(twin(x), y).backward()
        twin_opt.step()

    rows = []
    t_ours, t_theirs = medians([ours, theirs], repeats, warmup, BLOCKS)
    params = tree.size(ts.params)
    rows.append(dict(group="distributed", name=f"train_step gloo x{n}, MLP{dims}, batch {global_batch}",
                     deepfn_s=t_ours, baseline="torch DDP + AdamW", baseline_s=t_theirs, ratio=t_ours / t_theirs,
                     note=f"{params / 1e6:.2f}M params, eager"))
    # The same step without communication on either side: how much of the gap is the step itself.
    local_step = make_train_step(model, losses.cross_entropy, opt, compile=False, donate=True)
    plain, plain_opt = twin.module, torch.optim.AdamW(twin.module.parameters(), lr=1e-3)

    def ours_local():
        box["ts"], _ = local_step(box["ts"], (x, y), None)

    def theirs_local():
        plain_opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(plain(x), y).backward()
        plain_opt.step()

    t_ours, t_theirs = medians([ours_local, theirs_local], repeats, warmup, BLOCKS)
    rows.append(dict(group="distributed", name=f"train_step without all-reduce, MLP{dims}, batch {local}",
                     deepfn_s=t_ours, baseline="torch nn.Sequential + AdamW", baseline_s=t_theirs,
                     ratio=t_ours / t_theirs, note="both ranks busy, no communication: the step's own cost"))
    grads = tree.map(torch.randn_like, ts.params)
    flat = torch.cat([g.reshape(-1) for g in tree.leaves(grads)])
    t_ar, t_raw = medians([lambda: distributed.all_reduce_mean(grads), lambda: dist.all_reduce(flat.clone())],
                          repeats, warmup, BLOCKS)
    mb = flat.numel() * flat.element_size() / 1e6
    rows.append(dict(group="distributed", name=f"all_reduce_mean gloo x{n}, {mb:.1f} MB", deepfn_s=t_ar,
                     baseline="dist.all_reduce of one flat tensor", baseline_s=t_raw, ratio=t_ar / t_raw,
                     note=f"{mb / t_ar:.0f} MB/s vs {mb / t_raw:.0f} MB/s"))
    write_rows(out_dir, rows)
    distributed.shutdown()


def run(quick: bool = False) -> list[dict]:
    return launch("distributed", 2, quick, timeout=900)


if __name__ == "__main__":
    if "--worker" in sys.argv:
        _worker("--quick" in sys.argv, Path(sys.argv[sys.argv.index("--worker") + 1]))
    else:
        for row in run(quick="--quick" in sys.argv):
            print(row)

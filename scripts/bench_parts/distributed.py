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

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROWS_FILE = "rows.json"


def _medians(fns, repeats: int, warmup: int) -> list[float]:
    """Median seconds of each of ``fns``, timed in turns (``_timing.time_interleaved``), every
    call started together on both ranks."""
    import torch.distributed as dist
    from bench_parts._timing import Contender, time_interleaved
    for fn in fns:
        for _ in range(warmup):
            fn()
    contenders = [Contender(fn) for fn in fns]
    time_interleaved(contenders, repeats, blocks=10, sync=dist.barrier)
    return [c.figures["median_s"] for c in contenders]


def _worker(quick: bool, out_dir: Path) -> None:
    import torch.distributed as dist
    from torch import nn

    from deepfn import distributed, losses, models, optim, random, tree
    from deepfn.train import TrainState, make_train_step

    distributed.init("gloo", timeout=120)
    r, n = distributed.rank(), distributed.world_size()
    hidden, global_batch = ([256], 64) if quick else ([1024, 1024], 256)
    repeats, warmup = (5, 2) if quick else (60, 3)
    local = global_batch // n
    model = models.MLP(784, hidden, 10)
    opt = optim.adamw(1e-3)
    ts = distributed.broadcast(TrainState.create(model, opt, random.key(0)))
    # donate=True: params and moments updated in place, as torch.optim does for the twin.
    step = make_train_step(model, losses.cross_entropy, opt, all_reduce=distributed.all_reduce_mean, compile=False,
                           donate=True)
    k_x, k_y = random.split(random.fold_in(random.key(1), r))
    x, y = random.normal(k_x, (local, 784)), random.randint(k_y, (local,), 0, 10)
    box = {"ts": ts}

    def ours():
        box["ts"], _ = step(box["ts"], (x, y), None)

    dims = [784, *hidden, 10]
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU()]
    twin = nn.parallel.DistributedDataParallel(nn.Sequential(*layers[:-1]))
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=1e-3)

    def theirs():
        twin_opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(twin(x), y).backward()
        twin_opt.step()

    rows = []
    t_ours, t_theirs = _medians([ours, theirs], repeats, warmup)
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

    t_ours, t_theirs = _medians([ours_local, theirs_local], repeats, warmup)
    rows.append(dict(group="distributed", name=f"train_step without all-reduce, MLP{dims}, batch {local}",
                     deepfn_s=t_ours, baseline="torch nn.Sequential + AdamW", baseline_s=t_theirs,
                     ratio=t_ours / t_theirs, note="both ranks busy, no communication: the step's own cost"))
    grads = tree.map(torch.randn_like, ts.params)
    flat = torch.cat([g.reshape(-1) for g in tree.leaves(grads)])
    t_ar, t_raw = _medians([lambda: distributed.all_reduce_mean(grads), lambda: dist.all_reduce(flat.clone())],
                           repeats, warmup)
    mb = flat.numel() * flat.element_size() / 1e6
    rows.append(dict(group="distributed", name=f"all_reduce_mean gloo x{n}, {mb:.1f} MB", deepfn_s=t_ar,
                     baseline="dist.all_reduce of one flat tensor", baseline_s=t_raw, ratio=t_ar / t_raw,
                     note=f"{mb / t_ar:.0f} MB/s vs {mb / t_raw:.0f} MB/s"))
    if r == 0:
        (out_dir / ROWS_FILE).write_text(json.dumps(rows))
    distributed.shutdown()


def run(quick: bool = False) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        # As a module (-m), not as a file: a file's folder goes first on sys.path, and this
        # folder's random.py would then shadow the standard library's random.
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "bench_parts.distributed",
               "--worker", tmp] + (["--quick"] if quick else [])
        here = Path(__file__).resolve().parent
        path = os.pathsep.join([str(here.parent), str(here.parent.parent), os.environ.get("PYTHONPATH", "")])
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONPATH=path)
        if sys.platform.startswith("linux"):
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"distributed benchmark failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        return json.loads((Path(tmp) / ROWS_FILE).read_text())


if __name__ == "__main__":
    if "--worker" in sys.argv:
        _worker("--quick" in sys.argv, Path(sys.argv[sys.argv.index("--worker") + 1]))
    else:
        for row in run(quick="--quick" in sys.argv):
            print(row)

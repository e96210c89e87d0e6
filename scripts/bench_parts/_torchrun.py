"""The process set-up that the distributed bench parts share (``distributed``, ``shard``).

- :func:`launch`: runs a part as a module (``python -m bench_parts.<part> --worker DIR``) under
  torchrun on this machine (gloo over 127.0.0.1, one thread per process unless
  ``OMP_NUM_THREADS`` says otherwise) and returns the rows its rank 0 wrote with
  :func:`write_rows`;
- :func:`medians`: median seconds of contenders timed in turns, every call started together
  on all ranks;
- :func:`mlp_workload`: in a worker, joins the process group and gives the model, optimizer
  and this rank's batch that both parts train;
- :func:`torch_mlp`: the plain-PyTorch twin of ``deepfn.models.MLP`` (Linear and ReLU layers).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROWS_FILE = "rows.json"


def launch(part: str, nproc: int, quick: bool, timeout: float) -> list[dict]:
    """The rows of ``bench_parts.<part>``'s worker run on ``nproc`` processes (``--quick`` passed
    on when ``quick``); ``RuntimeError`` with the end of its stderr when torchrun fails."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        # As a module (-m), not as a file: a file's folder goes first on sys.path, and this
        # folder's random.py would then shadow the standard library's random.
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", f"bench_parts.{part}",
               "--worker", tmp] + (["--quick"] if quick else [])
        here = Path(__file__).resolve().parent
        path = os.pathsep.join([str(here.parent), str(here.parent.parent), os.environ.get("PYTHONPATH", "")])
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONPATH=path)
        if sys.platform.startswith("linux"):
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{part} benchmark (x{nproc}) failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        return json.loads((Path(tmp) / ROWS_FILE).read_text())


def write_rows(out_dir: Path, rows: list[dict]) -> None:
    """On rank 0, the rows for :func:`launch` to read."""
    from deepfn import distributed
    if distributed.rank() == 0:
        (out_dir / ROWS_FILE).write_text(json.dumps(rows))


def medians(fns: Sequence[Callable[[], object]], repeats: int, warmup: int, blocks: int) -> list[float]:
    """Median seconds of each of ``fns`` after ``warmup`` calls, timed in turns
    (``_timing.time_interleaved``, ``blocks`` turns each), every call started together on all ranks."""
    import torch.distributed as dist
    from bench_parts._timing import Contender, time_interleaved
    for fn in fns:
        for _ in range(warmup):
            fn()
    contenders = [Contender(fn) for fn in fns]
    time_interleaved(contenders, repeats, blocks=blocks, sync=dist.barrier)
    return [c.figures["median_s"] for c in contenders]


@dataclass(frozen=True)
class MlpWorkload:
    """This rank's share of the bench's MLP training: ``rank`` of ``world``; ``model``
    (``deepfn.models.MLP`` of widths ``dims``), ``optimizer`` (AdamW, lr 1e-3), ``global_batch``
    and this rank's ``x [global_batch / world, 784]`` float32, ``y`` int64 labels in ``[0, 10)``."""
    rank: int
    world: int
    model: Any
    optimizer: Any
    dims: list[int]
    global_batch: int
    x: Any
    y: Any


def mlp_workload(quick: bool, timeout: float) -> MlpWorkload:
    """Join the gloo process group (``timeout`` seconds) and make the workload:
    ``MLP(784, [1024, 1024], 10)`` on a global batch of 256; quick: ``MLP(784, [256], 10)``, 64."""
    from deepfn import distributed, models, optim, random
    distributed.init("gloo", timeout=timeout)
    r, n = distributed.rank(), distributed.world_size()
    hidden, global_batch = ([256], 64) if quick else ([1024, 1024], 256)
    k_x, k_y = random.split(random.fold_in(random.key(1), r))
    local = global_batch // n
    return MlpWorkload(r, n, models.MLP(784, hidden, 10), optim.adamw(1e-3), [784, *hidden, 10], global_batch,
                       random.normal(k_x, (local, 784)), random.randint(k_y, (local,), 0, 10))


def torch_mlp(dims: Sequence[int]):
    """``nn.Sequential`` of ``Linear(dims[i], dims[i + 1])`` with a ReLU between each two."""
    from torch import nn
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU()]
    return nn.Sequential(*layers[:-1])

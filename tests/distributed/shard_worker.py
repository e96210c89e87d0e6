"""A torchrun worker for the sharded tests: ``shard_worker.py OUT_DIR [RESUME_FILE | compiled]``.

Every rank runs every scenario of ``shard_scenarios`` under both shardings (eagerly), checks
the per-unit gather of ZeRO-3 on an 8-layer MLP, measures its shards' bytes, round-trips its sharded state through a
per-rank checkpoint, and rank 0 writes the unsharded state as a full checkpoint. Given
``RESUME_FILE`` (a full checkpoint of another world size), it resumes from it and also tries
to step the other world size's per-rank shards (which must fail clearly). Given ``compiled``,
it trains with compiled sharded steps (two scenarios) and measures the compiled per-unit
forward and backward against gathering every unit at once. Results go to ``OUT_DIR/rank<r>.pt``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import shard_scenarios as sc  # this script's own folder is on sys.path (torchrun runs it as a script)
import torch

from deepfn import checkpoint, distributed, losses, models, random, tree
from deepfn.distributed.shard_collectives import reduce_scatter_mean_leaves
from deepfn.distributed.shard_gather import GatherCount, grad_per_unit
from deepfn.distributed.shard_gather_compiled import grad_of_chunks, objective_on_chunks
from deepfn.distributed.shard_overlap import grad_and_reduce_scatter_mean
from deepfn.distributed.shard_units import plan_units
from deepfn.distributed.sharded_state import shard_bytes, shard_leaf
from deepfn.testing import allocated
from deepfn.train.compile import compiled
from deepfn.tree import flat

SHARDINGS = ("optimizer", "full")


def nbytes(t) -> int:
    return sum(x.numel() * x.element_size() for x in tree.leaves(t) if isinstance(x, torch.Tensor))


def run_overlap(r: int) -> dict:
    """grad_and_reduce_scatter_mean with tiny buckets, an unused leaf and accumulation, against
    torch.func.grad followed by reduce_scatter_mean_leaves."""
    params = {"w": torch.linspace(-1, 1, 12).reshape(3, 4), "v": torch.linspace(0, 1, 8).reshape(4, 2),
              "unused": torch.ones(5), "b": torch.zeros(3)}
    x = torch.arange(6.0).reshape(2, 3) * (r + 1) / 10

    def objective(p, x):
        y = torch.tanh(x @ p["w"]) @ p["v"] + p["b"][:2]
        return (y ** 2).sum(), {"y": y}

    earlier = [torch.full_like(v, 0.5 * (r + 1)) for v in params.values()]
    overlapped, (value, aux) = grad_and_reduce_scatter_mean(objective, params, x, accumulated=earlier, divide_by=2,
                                                            bucket_mb=0.00002)
    plain = torch.func.grad(lambda p, x: objective(p, x)[0])(params, x)
    local = [(e + plain[k]) / 2 for e, k in zip(earlier, params, strict=True)]
    return {"overlapped": overlapped, "after": reduce_scatter_mean_leaves(local, bucket_mb=0.00002),
            "local": local, "value": value, "y_requires_grad": aux["y"].requires_grad}


def run_per_unit(r: int, n: int) -> dict:
    """grad_per_unit on this rank's chunks of an 8-layer MLP, with this rank's own data: its
    chunks of the mean gradient, the whole local gradient (the test averages them over
    ranks), and the peak bytes of gathered parameters against the largest unit's."""
    mlp = _ShardedMLP(r, n, models.MLP(6, [16] * 8, 3), batch=4)
    count = GatherCount()
    got, _ = grad_per_unit(mlp.objective, mlp.chunks, mlp.shapes, mlp.plan, mlp.dtypes, mlp.x, mlp.y, count=count)
    return {"chunks": got, "local": mlp.local_gradient(), "peak": count.peak_bytes, "largest": mlp.largest,
            "model": mlp.model_bytes, "live": count.live_bytes}


class _ShardedMLP:
    """An MLP's objective, this rank's data (``batch`` rows) and chunks of its parameters, and
    their unit plan; ``largest`` is the biggest unit's padded whole bytes."""

    def __init__(self, r: int, n: int, model, batch: int) -> None:
        params, state = model.init(random.key(5))
        self.params = params
        self.x = random.normal(random.fold_in(random.key(6), r), (batch, model.input_dim))
        self.y = torch.arange(batch) % model.output_dim

        def objective(p, x, y):
            logits, _ = model.apply(p, state, x, train=True)
            return losses.cross_entropy(logits, y), None

        self.objective = objective
        leaves, spec = flat.flatten(params)
        self.shapes, self.dtypes = [tuple(v.shape) for v in leaves], [v.dtype for v in leaves]
        self.chunks = [shard_leaf(v, r, n) for v in leaves]
        self.plan = plan_units(flat.unflatten(spec, self.chunks))
        self.model_bytes = sum(v.numel() * 4 for v in leaves)
        self.largest = max(sum(self.chunks[i].numel() * n * 4 for i in u) for u in self.plan.units)

    def local_gradient(self) -> list[torch.Tensor]:
        """The whole gradient of this rank's data, flat (the test averages it over ranks)."""
        grad = torch.func.grad(lambda p: self.objective(p, self.x, self.y)[0])(self.params)
        return flat.flatten(grad)[0]


def run(out_dir: Path, resume: Path | None) -> dict:
    r, n = distributed.rank(), distributed.world_size()
    out: dict = {"overlap": run_overlap(r), "per_unit": run_per_unit(r, n)}
    steps = range(sc.STEPS)
    for name in sc.SCENARIOS:
        for sharding in SHARDINGS:
            sharded = distributed.shard(sc.start(name), sharding)
            ts, step_losses = sc.train(name, sharded, steps, sharding=sharding, rank=r, world_size=n)
            out[f"{name}/{sharding}"] = {"params": distributed.unshard(ts).params, "losses": step_losses}
        # Data parallel without sharding on the same shards: the same local gradients and mean.
        ddp, _ = sc.train(name, sc.start(name), steps, rank=r, world_size=n,
                          all_reduce=distributed.all_reduce_mean)
        out[f"{name}/ddp"] = {"params": ddp.params}

    full = sc.start("adamw_accum_scaled_clipped")
    out["bytes/whole"] = {"params": nbytes(full.params), "opt_state": nbytes(full.opt_state)}
    for sharding in SHARDINGS:
        out[f"bytes/{sharding}"] = shard_bytes(distributed.shard(full, sharding))

    # Per-rank checkpoint: save, load, and one more step from each gives the same state.
    name = "adamw_accum_scaled_clipped"
    ts, _ = sc.train(name, distributed.shard(sc.start(name), "full"), steps, sharding="full", rank=r, world_size=n)
    path = out_dir / f"n{n}_rank{r}.safetensors"
    checkpoint.save(path, ts)
    loaded = checkpoint.load(path)
    out["ckpt/type"] = type(loaded).__name__
    out["ckpt/layout_equal"] = (loaded.world_size, loaded.rank, loaded.param_shapes, loaded.opt_shapes,
                                loaded.sharding) == (ts.world_size, ts.rank, ts.param_shapes, ts.opt_shapes,
                                                     ts.sharding)
    out["ckpt/values_equal"] = tree.all_equal(loaded, ts)
    more = range(sc.STEPS, sc.STEPS + 1)
    a, _ = sc.train(name, ts, more, sharding="full", rank=r, world_size=n)
    b, _ = sc.train(name, loaded, more, sharding="full", rank=r, world_size=n)
    out["ckpt/continued_equal"] = tree.all_equal(a, b)

    # A full checkpoint through unshard, written by rank 0 only.
    whole = distributed.unshard(ts)
    if r == 0:
        checkpoint.save(out_dir / f"full_n{n}.safetensors", whole)
    distributed.barrier()

    if resume is not None:
        other = checkpoint.load(resume)
        ts, _ = sc.train(name, distributed.shard(other, "full"), range(sc.STEPS, sc.STEPS + 2), sharding="full",
                         rank=r, world_size=n)
        out["resumed"] = {"params": distributed.unshard(ts).params}
        foreign = checkpoint.load(resume.with_name(f"{resume.stem.replace('full_', '')}_rank{r}.safetensors"))
        for what, call in (("step", lambda: sc.train(name, foreign, more, sharding="full", rank=r, world_size=n)),
                           ("unshard", lambda: distributed.unshard(foreign))):
            try:
                call()
                out[f"foreign/{what}"] = "no error"
            except ValueError as err:
                out[f"foreign/{what}"] = str(err)
    return out


def run_compiled_per_unit(r: int, n: int) -> dict:
    """The compiled per-unit forward and backward on this rank's chunks of a 17-unit MLP, and the
    same gathering every unit at once: each rank's gradient chunks, its whole local gradient
    (the test averages them over ranks) and the peak bytes of one call (profiler allocations)."""
    mlp = _ShardedMLP(r, n, models.MLP(128, [128] * 16, 4), batch=2)
    chunks, x, y = mlp.chunks, mlp.x, mlp.y
    out = {"local": mlp.local_gradient(), "model": mlp.model_bytes,
           "chunk_bytes": sum(c.numel() * 4 for c in chunks), "largest": mlp.largest}
    for per_unit in (True, False):
        run = compiled(objective_on_chunks(mlp.objective, mlp.plan, mlp.shapes, mlp.dtypes, per_unit=per_unit),
                       None, "per unit")
        out[f"chunks/{per_unit}"], _ = grad_of_chunks(run, chunks, x, y)   # compiles
        out[f"peak/{per_unit}"], _ = allocated(lambda run=run: grad_of_chunks(run, chunks, x, y), repeats=3)
    return out


def run_compiled() -> dict:
    r, n = distributed.rank(), distributed.world_size()
    out = {"per_unit": run_compiled_per_unit(r, n)}
    for sharding in SHARDINGS:
        name = "adamw_accum_scaled_clipped"
        ts, _ = sc.train(name, distributed.shard(sc.start(name), sharding), range(sc.STEPS), sharding=sharding,
                         rank=r, world_size=n, compile=True)
        out[f"compiled/{sharding}"] = {"params": distributed.unshard(ts).params}
    name = "transformer_layer"   # "full" compiled, one unit at a time, with accumulation and clipping
    ts, _ = sc.train(name, distributed.shard(sc.start(name), "full"), range(sc.STEPS), sharding="full",
                     rank=r, world_size=n, compile=True)
    out[f"compiled/{name}/full"] = {"params": distributed.unshard(ts).params}
    return out


def main() -> None:
    out_dir = Path(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else None
    distributed.init("gloo", timeout=float(os.environ.get("DEEPFN_TEST_TIMEOUT", "60")))
    out = run_compiled() if mode == "compiled" else run(out_dir, Path(mode) if mode else None)
    torch.save(out, out_dir / f"rank{distributed.rank()}.pt")
    distributed.shutdown()


if __name__ == "__main__":
    main()

"""A torchrun worker for the 2-process tests: ``worker.py MODE OUT_DIR``.

Modes: ``train`` (eager: broadcast, all-reduce, the training scenarios, batch-norm state;
results saved to ``OUT_DIR/rank<r>.pt``), ``compiled`` (one scenario, compiled step), ``raise`` / ``exit`` / ``hang`` (rank 1 fails
while rank 0 all-reduces), ``mismatch`` (rank 1 builds a different model).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import scenarios  # this script's own folder is on sys.path (torchrun runs it as a script)
import torch

from deepfn import distributed, losses, models, optim, random
from deepfn.train import TrainState, make_train_step


def run_train(r: int, n: int) -> dict:
    out: dict = {}
    model = models.MLP(scenarios.IN, [16, 16], scenarios.OUT)
    own, _ = model.init(random.key(100 + r))            # a different init on every rank
    out["digest"] = distributed.check_same_structure(own)
    out["init_own"], out["init_broadcast"] = own, distributed.broadcast(own)
    tree = {"a": torch.full((300,), r + 1.0), "b": {"c": torch.arange(6, dtype=torch.float64) * (r + 1),
            "i": torch.tensor([r])}, "h": torch.full((5,), float(r), dtype=torch.float16)}
    out["reduced"] = distributed.all_reduce_mean(tree, bucket_mb=0.0005)   # ~520 bytes: several buckets
    out["reduce_input"] = tree
    for name in scenarios.SCENARIOS:
        # all_reduce_mean itself overlaps with backward; any other function runs after it.
        out[name] = scenarios.train(name, rank=r, world_size=n, all_reduce=distributed.all_reduce_mean)
        out[name + "/after_backward"] = scenarios.train(name, rank=r, world_size=n,
                                                        all_reduce=lambda g: distributed.all_reduce_mean(g))
    out["overlap"] = run_overlap(r)
    bn = models.MLP(scenarios.IN, [16], scenarios.OUT, batch_norm=True)
    opt = optim.sgd(0.1)
    ts = TrainState.create(bn, opt, random.key(5))
    step = make_train_step(bn, losses.cross_entropy, opt, all_reduce=distributed.all_reduce_mean, compile=False)
    x, y = scenarios.data(0)
    idx = distributed.shard_indices(random.key(11), 0, scenarios.GLOBAL_BATCH, r, n)
    ts, _ = step(ts, (x[idx], y[idx]), None)
    out["bn_local"], out["bn_averaged"] = ts.state, distributed.all_reduce_mean(ts.state)
    return out


def run_overlap(r: int) -> dict:
    """grad_and_all_reduce_mean with many tiny buckets, an unused leaf and accumulation,
    against torch.func.grad followed by all_reduce_mean."""
    params = {"w": torch.linspace(-1, 1, 12).reshape(3, 4), "v": torch.linspace(0, 1, 8).reshape(4, 2),
              "unused": torch.ones(5), "b": torch.zeros(2)}
    x = torch.arange(6.0).reshape(2, 3) * (r + 1) / 10

    def objective(p, x):
        y = torch.tanh(x @ p["w"]) @ p["v"] + p["b"]
        return (y ** 2).sum(), {"y": y}

    earlier = {k: torch.full_like(v, 0.5 * (r + 1)) for k, v in params.items()}
    overlapped, (value, aux) = distributed.grad_and_all_reduce_mean(objective, params, x, accumulated=earlier,
                                                                    divide_by=2, bucket_mb=0.00005)
    plain = torch.func.grad(lambda p, x: objective(p, x)[0])(params, x)
    plain = {k: (earlier[k] + plain.get(k, torch.zeros_like(params[k]))) / 2 for k in params}
    return {"overlapped": overlapped, "after": distributed.all_reduce_mean(plain, bucket_mb=0.00005),
            "value": value, "y": aux["y"], "requires_grad": [t.requires_grad for t in overlapped.values()]}


def main() -> None:
    mode, out_dir = sys.argv[1], Path(sys.argv[2])
    distributed.init("gloo", timeout=float(os.environ.get("DEEPFN_TEST_TIMEOUT", "30")))
    r, n = distributed.rank(), distributed.world_size()
    if mode == "train":
        torch.save(run_train(r, n), out_dir / f"rank{r}.pt")
    elif mode == "compiled":       # the whole step under torch.compile(fullgraph=True), all-reduce inside
        out = scenarios.train("adamw_accum_scaled_clipped", rank=r, world_size=n,
                              all_reduce=distributed.all_reduce_mean, compile=True)
        torch.save(out, out_dir / f"rank{r}.pt")
    elif mode == "mismatch":
        hidden = [16, 16] if r == 0 else [16, 17]
        params, _ = models.MLP(scenarios.IN, hidden, scenarios.OUT).init(random.key(0))
        distributed.check_same_structure(params)
    else:
        distributed.barrier()
        if r == 1:
            if mode == "raise":
                raise RuntimeError("worker rank 1 fails on purpose")
            if mode == "exit":
                os._exit(3)
            time.sleep(600)                                # mode "hang": never reach the collective
        for _ in range(1000):
            distributed.all_reduce_mean({"g": torch.ones(4)})
            time.sleep(0.01)
    distributed.shutdown()


if __name__ == "__main__":
    main()

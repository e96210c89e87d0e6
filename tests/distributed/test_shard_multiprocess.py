"""Sharded data parallel with 4 and 2 gloo processes on 127.0.0.1 (torchrun): every sharding
gives the parameters of one process on the global batch; shards hold ~1/N of the bytes;
per-rank checkpoints round-trip; a full checkpoint (through ``unshard``) loads in one process
and resumes on another world size (4 -> 2). Slow-marked: compiled sharded steps (``"full"``
gathering one unit at a time inside its graphs) equal one process, and their per-unit
forward and backward peak at about 1/N of the model plus a few units' buffers, where
gathering everything holds the whole model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deepfn import checkpoint
from deepfn.distributed.sharded_state import shard_leaf
from deepfn.train import TrainState

from ..utils import assert_trees_close
from . import shard_scenarios as sc
from .test_multiprocess import _free_port

WORKER = Path(__file__).with_name("shard_worker.py")
WORLDS = (2, 4)


def launch(nproc: int, out: Path, *args: str, wall_s: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "--max-restarts", "0",
           str(WORKER), str(out), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", DEEPFN_TEST_TIMEOUT="120")
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return subprocess.run(cmd, capture_output=True, text=True, timeout=wall_s, env=env)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, dict]:
    """``{world size: {"dir": its folder, "ranks": each rank's results}}``; the 2-rank job
    resumes from the 4-rank job's full checkpoint."""
    found: dict[int, dict] = {}
    for n in (4, 2):
        out = tmp_path_factory.mktemp(f"shard{n}")
        resume = [str(found[4]["dir"] / "full_n4.safetensors")] if n == 2 else []
        proc = launch(n, out, *resume)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        found[n] = {"dir": out, "ranks": [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(n)]}
    return found


@pytest.fixture(scope="module")
def references() -> dict[str, tuple[TrainState, torch.Tensor]]:
    return {name: sc.reference(name) for name in sc.SCENARIOS}


@pytest.mark.parametrize("n", WORLDS)
@pytest.mark.parametrize("sharding", ["optimizer", "full"])
@pytest.mark.parametrize("name", sorted(sc.SCENARIOS))
def test_sharded_training_equals_one_process_on_the_global_batch(runs, references, name, sharding, n):
    expected, expected_losses = references[name]
    # bf16 compute rounds each rank's half-batch sums apart from the whole batch's.
    tol = dict(rtol=2e-3, atol=2e-3) if name == "bf16_policy" else dict(rtol=1e-5, atol=1e-6)
    for r in range(n):
        got = runs[n]["ranks"][r][f"{name}/{sharding}"]
        assert_trees_close(got["params"], expected.params, **tol)
        torch.testing.assert_close(got["losses"], expected_losses, **tol)   # the global batch's loss


@pytest.mark.parametrize("n", WORLDS)
@pytest.mark.parametrize("sharding", ["optimizer", "full"])
@pytest.mark.parametrize("name", sorted(sc.SCENARIOS))
def test_sharded_training_equals_data_parallel_on_the_same_shards(runs, name, sharding, n):
    # The same local gradients and the same mean: tight, bf16 included.
    for r in range(n):
        ranks = runs[n]["ranks"][r]
        assert_trees_close(ranks[f"{name}/{sharding}"]["params"], ranks[f"{name}/ddp"]["params"],
                           rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n", WORLDS)
def test_reduce_scatter_during_backward_equals_reduce_scatter_after_it(runs, n):
    chunks = [[] for _ in range(4)]
    for r in range(n):
        got = runs[n]["ranks"][r]["overlap"]
        for a, b in zip(got["overlapped"], got["after"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)
        for j, c in enumerate(got["overlapped"]):
            chunks[j].append(c)
        assert not got["y_requires_grad"]
    # The chunks, put together, are the mean over ranks of each whole leaf (padding dropped).
    for j, whole in enumerate(runs[n]["ranks"][0]["overlap"]["local"]):
        mean = sum(runs[n]["ranks"][r]["overlap"]["local"][j] for r in range(n)) / n
        torch.testing.assert_close(torch.cat(chunks[j])[:whole.numel()].view(whole.shape), mean)
    # The unused leaf's gradient is zero: only the accumulated part, mean of 0.5 * (r + 1) / 2.
    torch.testing.assert_close(runs[n]["ranks"][0]["overlap"]["overlapped"][2][0], torch.tensor(0.25 * (n + 1) / 2))


@pytest.mark.parametrize("n", WORLDS)
def test_per_unit_gather_gives_each_rank_its_chunk_of_the_mean_and_holds_one_unit(runs, n):
    ranks = [runs[n]["ranks"][r]["per_unit"] for r in range(n)]
    for j in range(len(ranks[0]["local"])):
        mean = sum(got["local"][j] for got in ranks) / n
        for r, got in enumerate(ranks):
            torch.testing.assert_close(got["chunks"][j], shard_leaf(mean, r, n), rtol=1e-5, atol=1e-6)
    for got in ranks:   # at most one unit's gathered parameters alive at once (of 9 units)
        assert 0 < got["peak"] <= got["largest"] < got["model"] / 4 and got["live"] == 0


def test_training_moved_the_parameters(runs):
    start = sc.start("sgd_momentum").params
    with pytest.raises(AssertionError):
        assert_trees_close(runs[2]["ranks"][0]["sgd_momentum/full"]["params"], start)


@pytest.fixture(scope="module")
def compiled_runs(tmp_path_factory) -> dict[int, list[dict]]:
    """``{world size: each rank's results}`` of the worker's compiled mode."""
    found = {}
    for n in WORLDS:
        out = tmp_path_factory.mktemp(f"compiled{n}")
        proc = launch(n, out, "compiled", wall_s=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        found[n] = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(n)]
    return found


@pytest.mark.slow   # minutes of compiling on 2 cores; scripts/bench.py's "shard" part runs compiled sharded steps
@pytest.mark.parametrize("n", WORLDS)
def test_compiled_sharded_steps_equal_one_process(compiled_runs, references, n):
    expected, _ = references["adamw_accum_scaled_clipped"]
    layer, _ = references["transformer_layer"]
    for got in compiled_runs[n]:
        for sharding in ("optimizer", "full"):
            assert_trees_close(got[f"compiled/{sharding}"]["params"], expected.params, rtol=1e-5, atol=1e-6)
        assert_trees_close(got["compiled/transformer_layer/full"]["params"], layer.params, rtol=1e-5, atol=1e-6)


@pytest.mark.slow   # as above
@pytest.mark.parametrize("n", WORLDS)
def test_compiled_per_unit_gather_gives_the_chunks_of_the_mean_and_holds_about_one_unit(compiled_runs, n):
    ranks = [got["per_unit"] for got in compiled_runs[n]]
    for j in range(len(ranks[0]["local"])):
        mean = sum(got["local"][j] for got in ranks) / n
        for r, got in enumerate(ranks):
            for per_unit in (True, False):
                torch.testing.assert_close(got[f"chunks/{per_unit}"][j], shard_leaf(mean, r, n), rtol=1e-5, atol=1e-6)
    for got in ranks:
        # Per unit: this rank's gradient chunks (1/N of the model) and a few buffers of one unit's
        # size at a time (the gathered buffer, its leaves copied out of its columns, the whole
        # gradient and the packed one it is reduce-scattered from; 4 ranks read up to 5 such).
        # All at once: every whole parameter through backward.
        bound = got["chunk_bytes"] + 6 * got["largest"]
        assert got["largest"] < got["model"] / 16
        assert got["peak/True"] <= bound < got["model"] <= got["peak/False"], (got["peak/True"], got["peak/False"])


@pytest.mark.parametrize("n", WORLDS)
def test_shards_hold_about_one_nth_of_the_bytes(runs, n):
    got = runs[n]["ranks"][n - 1]
    whole = got["bytes/whole"]
    slack = 4 * 4 * 8 + 3 * 8   # per leaf at most n - 1 padding floats, per state its 0-d counts
    assert got["bytes/optimizer"]["params"] == whole["params"]
    assert got["bytes/optimizer"]["opt_state"] <= whole["opt_state"] / n + slack
    assert got["bytes/full"]["params"] <= whole["params"] / n + slack
    assert got["bytes/full"]["opt_state"] <= whole["opt_state"] / n + slack


@pytest.mark.parametrize("n", WORLDS)
def test_per_rank_checkpoints_round_trip_and_continue_identically(runs, n):
    for r in range(n):
        got = runs[n]["ranks"][r]
        assert got["ckpt/type"] == "ShardedTrainState"
        assert got["ckpt/layout_equal"] and got["ckpt/values_equal"] and got["ckpt/continued_equal"]


@pytest.mark.parametrize("n", WORLDS)
def test_unsharded_checkpoint_loads_in_one_process(runs, references, n):
    loaded = checkpoint.load(runs[n]["dir"] / f"full_n{n}.safetensors")
    expected, _ = references["adamw_accum_scaled_clipped"]
    assert type(loaded) is TrainState
    assert_trees_close(loaded.params, expected.params, rtol=1e-5, atol=1e-6)
    assert_trees_close(loaded.opt_state, expected.opt_state, rtol=1e-5, atol=1e-6)
    assert int(loaded.step) == sc.STEPS


def test_resume_on_another_world_size_from_the_full_checkpoint(runs):
    expected, _ = sc.reference("adamw_accum_scaled_clipped", sc.STEPS + 2)
    for r in range(2):
        assert_trees_close(runs[2]["ranks"][r]["resumed"]["params"], expected.params, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("what", ["step", "unshard"])
def test_shards_of_another_world_size_are_refused(runs, what):
    message = runs[2]["ranks"][1][f"foreign/{what}"]
    assert "cut for 4 ranks but this job has 2" in message and "full checkpoint" in message, message

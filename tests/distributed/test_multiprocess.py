"""Two gloo processes on 127.0.0.1, launched with torchrun: data-parallel training equals
single-process training on the global batch, broadcast, all-reduce, and failing fast."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deepfn import tree

from ..utils import assert_trees_close
from . import scenarios

WORKER = Path(__file__).with_name("worker.py")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(mode: str, out: Path, *, timeout_s: float = 30, wall_s: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "--max-restarts", "0",
           str(WORKER), mode, str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", DEEPFN_TEST_TIMEOUT=str(timeout_s))
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"                # loopback only, whatever the hostname resolves to
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=wall_s, env=env)
    return proc, time.monotonic() - start


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    proc, _ = launch("train", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("path", ["", "/after_backward"], ids=["overlapped", "after_backward"])
@pytest.mark.parametrize("name", sorted(scenarios.SCENARIOS))
def test_data_parallel_equals_single_process_on_the_global_batch(results, name, path):
    reference = scenarios.train(name)
    for r in range(2):
        assert_trees_close(results[r][name + path]["params"], reference["params"], rtol=1e-5, atol=1e-6)
    # Each rank's loss is its own half's; their mean is the global batch's loss.
    mean_loss = (results[0][name + path]["losses"] + results[1][name + path]["losses"]) / 2
    torch.testing.assert_close(mean_loss, reference["losses"], rtol=1e-5, atol=1e-6)


def test_overlapped_all_reduce_equals_all_reduce_after_backward(results):
    for r in range(2):
        got = results[r]["overlap"]
        for k, v in got["after"].items():
            assert torch.equal(got["overlapped"][k], v), k      # same buckets' arithmetic, any order
        assert torch.equal(got["overlapped"]["unused"], torch.full((5,), 0.375))   # mean of 0.5 / 2 and 1.0 / 2
        assert not any(got["requires_grad"]) and not got["y"].requires_grad
    assert torch.equal(results[0]["overlap"]["overlapped"]["w"], results[1]["overlap"]["overlapped"]["w"])


def test_training_actually_moved_the_parameters(results):
    # Guards the oracle above: equal-but-untouched parameters would also compare equal.
    model, opt, _ = scenarios.SCENARIOS["sgd_momentum"]
    from deepfn import random
    from deepfn.train import TrainState
    start = TrainState.create(model, opt, random.key(3)).params
    assert not tree.all_equal(results[0]["sgd_momentum"]["params"], start)


def test_broadcast_gives_rank_zeros_parameters_everywhere(results):
    assert not tree.all_equal(results[0]["init_own"], results[1]["init_own"])
    for r in range(2):
        assert tree.all_equal(results[r]["init_broadcast"], results[0]["init_own"])
    assert results[0]["digest"] == results[1]["digest"]


def test_all_reduce_mean_averages_float_leaves_over_several_buckets(results):
    for r in range(2):
        got = results[r]["reduced"]
        torch.testing.assert_close(got["a"], torch.full((300,), 1.5))
        torch.testing.assert_close(got["b"]["c"], torch.arange(6, dtype=torch.float64) * 1.5)
        torch.testing.assert_close(got["h"], torch.full((5,), 0.5, dtype=torch.float16))
        assert torch.equal(got["b"]["i"], torch.tensor([r]))          # integer leaves untouched
        assert torch.equal(results[r]["reduce_input"]["a"], torch.full((300,), r + 1.0))   # input unchanged


def test_batch_norm_running_statistics_are_averaged(results):
    local = [tree.flatten(results[r]["bn_local"]) for r in range(2)]
    assert not torch.equal(local[0]["network.1.running_mean"], local[1]["network.1.running_mean"])
    for r in range(2):
        avg = tree.flatten(results[r]["bn_averaged"])
        for name in ("network.1.running_mean", "network.1.running_var"):
            torch.testing.assert_close(avg[name], (local[0][name] + local[1][name]) / 2)
        assert torch.equal(avg["network.1.num_batches_tracked"], local[r]["network.1.num_batches_tracked"])


@pytest.mark.parametrize("mode", ["raise", "exit"])
def test_a_failing_rank_fails_the_job_fast(tmp_path, mode):
    proc, elapsed = launch(mode, tmp_path, timeout_s=20, wall_s=90)
    assert proc.returncode != 0
    assert elapsed < 60, f"the job took {elapsed:.0f} s to fail"


def test_a_hanging_rank_times_out_with_a_clear_error(tmp_path):
    proc, elapsed = launch("hang", tmp_path, timeout_s=3, wall_s=90)
    assert proc.returncode != 0
    assert "CollectiveError" in proc.stderr and "another rank probably died, hangs" in proc.stderr, proc.stderr[-3000:]
    assert elapsed < 60, f"the job took {elapsed:.0f} s to fail"


def test_mismatched_parameter_trees_raise_at_start_up(tmp_path):
    proc, _ = launch("mismatch", tmp_path, wall_s=90)
    assert proc.returncode != 0
    err = proc.stderr
    assert "check_same_structure: params differ between ranks" in err, err[-3000:]
    assert "only on rank 1" in err and "network.2.weight" in err and "[17, 16]" in err, err[-3000:]

"""Launching ``scripts/`` under torchrun from a test, on this machine (127.0.0.1, gloo over the
loopback), and reading what the runs wrote: shared by the elastic and multi-node tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from deepfn import checkpoint, tree

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
# Timings, and how many new input signatures this process met (a restarted process meets them again).
DROP = ("epoch_time", "eval_time", "samples_per_s", "train_new_signatures", "eval_new_signatures")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(launcher: list[str], script_args: list[str], cwd: Path, script: str = "train_mlp.py",
             **env: str) -> subprocess.Popen:
    """``python -m torch.distributed.run LAUNCHER scripts/SCRIPT SCRIPT_ARGS``, started (not waited for)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, str(SCRIPTS / script), *script_args]
    full_env = {k: v for k, v in os.environ.items() if k != "DEEPFN_TEST_KILL_AT_STEP"}
    full_env.update(OMP_NUM_THREADS="1", **env)
    if sys.platform.startswith("linux"):
        full_env["GLOO_SOCKET_IFNAME"] = "lo"   # loopback only, whatever the hostname resolves to
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env, cwd=cwd)


def one_node(restarts: int) -> list[str]:
    """torchrun's flags for one node of 2 processes meeting at a c10d rendezvous on localhost."""
    return ["--nnodes", "1", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--max-restarts", str(restarts)]


def finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    """Wait for ``proc`` (killed after ``timeout`` seconds) and assert that it exited with 0."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def rows(out: Path) -> list[dict]:
    """The rows of ``OUT/history.jsonl`` without the timings (``DROP``)."""
    lines = (out / "history.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in DROP} for line in lines]


def same_checkpoints(got_dir: Path, want_dir: Path, name: str, step: int):
    """Assert that checkpoint ``name`` of two runs' ``--out`` folders holds the same ``step``
    and, bit for bit, the same parameters, model state (batch-norm statistics) and optimizer
    state; returns the first run's."""
    got, want = checkpoint.load(got_dir / "checkpoints" / name), checkpoint.load(want_dir / "checkpoints" / name)
    assert int(got.step) == int(want.step) == step
    assert tree.all_equal(got.params, want.params)
    assert tree.all_equal(got.state, want.state)
    assert tree.all_equal(got.opt_state, want.opt_state)
    return got

"""Checkpoints that do not fit the model are refused with the mismatched leaves named, and a
process killed while saving leaves the previous checkpoint loadable."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from deepfn import checkpoint, optim, random, tree
from deepfn.models import MLP
from deepfn.train import TrainState


def _train_state(hidden=8, dtype=torch.float32):
    model, opt = MLP(4, (hidden,), 3, batch_norm=True), optim.adamw(lr=1e-3)
    ts = TrainState.create(model, opt, random.key(0))
    return ts.replace(params=tree.cast(ts.params, dtype))


def test_load_like_accepts_the_same_config(tmp_path):
    saved = _train_state()
    checkpoint.save(tmp_path / "a.safetensors", saved.replace(step=7))
    back = checkpoint.load(tmp_path / "a.safetensors", like=_train_state())
    assert tree.all_equal(back, saved.replace(step=7))


def test_load_like_names_shape_mismatches(tmp_path):
    checkpoint.save(tmp_path / "a.safetensors", _train_state(hidden=8))
    with pytest.raises(ValueError, match=r"does not match `like`.*params/network/0/weight: shape \[8, 4\] in the "
                                         r"file, \[16, 4\] in like;.* and 9 more"):
        checkpoint.load(tmp_path / "a.safetensors", like=_train_state(hidden=16))


def test_load_like_names_dtype_mismatches(tmp_path):
    checkpoint.save(tmp_path / "a.safetensors", _train_state())
    with pytest.raises(ValueError, match=r"params/network/3/bias: dtype torch.float32 in the file, "
                                         r"torch.float64 in like"):
        checkpoint.load(tmp_path / "a.safetensors", like=_train_state(dtype=torch.float64))


def test_load_like_names_missing_and_unexpected_leaves(tmp_path):
    checkpoint.save(tmp_path / "a.safetensors", {"w": torch.ones(2), "old": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"missing \[new\]; unexpected \[old\]"):
        checkpoint.load(tmp_path / "a.safetensors", like={"w": torch.ones(2), "new": torch.zeros(1)})


def test_load_like_names_container_mismatch(tmp_path):
    checkpoint.save(tmp_path / "a.safetensors", {"w": [torch.ones(2)]})
    with pytest.raises(ValueError, match=r"another model or config\?\): w: a list in the file, a tuple in like$"):
        checkpoint.load(tmp_path / "a.safetensors", like={"w": (torch.ones(2),)})


def test_manager_restore_like(tmp_path):
    m = checkpoint.CheckpointManager(tmp_path)
    m.save(0, {"w": torch.ones(3)})
    with pytest.raises(ValueError, match=r"w: shape \[3\] in the file, \[4\] in like"):
        m.restore(like={"w": torch.ones(4)})


_CHILD = textwrap.dedent("""
    import os, signal, sys
    import torch
    from deepfn import checkpoint
    directory, mode = sys.argv[1], sys.argv[2]
    m = checkpoint.CheckpointManager(directory, keep_last=2, keep_best=False)
    big = lambda s: {"w": torch.full((1 << 20,), float(s)), "b": torch.full((4096,), float(s)), "step": s}
    m.save(1, big(1))
    if mode == "mid-write":
        # Write half the bytes of the next checkpoint, then die by SIGKILL (no cleanup runs).
        real_fdopen = os.fdopen
        class HalfThenKill:
            def __init__(self, f): self.f = f
            def __enter__(self): return self
            def __exit__(self, *exc): return False
            def write(self, data):
                self.f.write(data[: len(data) // 2]); self.f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        os.fdopen = lambda fd, *a, **k: HalfThenKill(real_fdopen(fd, *a, **k))
        m.save(2, big(2))
    else:
        step = 2
        while True:            # the parent kills us at a random moment
            m.save(step, big(step))
            step += 1
""")


def _run_child(directory, mode):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(directory), mode], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _assert_consistent(directory):
    m = checkpoint.CheckpointManager(directory, keep_last=2, keep_best=False)
    steps = m.steps()
    assert steps, os.listdir(directory)
    for s in steps:                       # every listed checkpoint is complete and whole
        t = m.restore(s)
        assert t["step"] == s and bool((t["w"] == s).all()) and bool((t["b"] == s).all())
    return m


def test_sigkill_mid_write_keeps_previous_checkpoint(tmp_path):
    child = _run_child(tmp_path, "mid-write")
    _, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, err.decode()[-2000:]
    leftovers = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert leftovers, "the child should have died with a half-written temporary file"
    m = _assert_consistent(tmp_path)
    assert m.steps() == [1] and m.restore()["step"] == 1
    # The next save of a (resumed) manager removes the dead process's temporary file.
    m.save(2, {"w": torch.ones(1), "b": torch.ones(1), "step": 2})
    assert sorted(os.listdir(tmp_path)) == ["ckpt_000000001.safetensors", "ckpt_000000002.safetensors"]


def test_sigkill_at_random_moments_never_corrupts_listed_checkpoints(tmp_path):
    for attempt, delay in enumerate((0.05, 0.13, 0.31)):
        directory = tmp_path / str(attempt)
        child = _run_child(directory, "loop")
        deadline = time.monotonic() + 120
        while not (directory.exists() and any(n.startswith("ckpt_") for n in os.listdir(directory))):
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        child.stderr.close()
        _assert_consistent(directory)

"""Checkpoints that do not fit the model are refused with the first mismatched path named, a
process killed while saving leaves the previous checkpoint loadable, damaged files are named
(and skipped by restore_latest), and planted files naming code run nothing."""

import builtins
import hashlib
import importlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from deepfn import amp, checkpoint, optim, random, tree
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


# --- another model's checkpoint: the first path that differs ------------------------------

def test_load_like_of_another_head_names_the_first_differing_path(tmp_path):
    model, opt = MLP(4, (8,), 3, batch_norm=True), optim.adamw(lr=1e-3)
    checkpoint.save(tmp_path / "a.safetensors", TrainState.create(model, opt, random.key(0)))
    other = TrainState.create(MLP(4, (8,), 5, batch_norm=True), opt, random.key(0))
    with pytest.raises(ValueError, match=r"\(another model or config\?\): params/network/3/weight: shape \[3, 8\] "
                                         r"in the file, \[5, 8\] in like;"):
        checkpoint.load(tmp_path / "a.safetensors", like=other)


def test_load_like_of_a_deeper_model_names_the_first_differing_path(tmp_path):
    opt = optim.sgd(lr=0.1)
    checkpoint.save(tmp_path / "a.safetensors", TrainState.create(MLP(4, (8, 8), 3), opt, random.key(0)))
    other = TrainState.create(MLP(4, (8,), 3), opt, random.key(0))
    with pytest.raises(ValueError, match=r"config\?\): params/network/2/weight: shape \[8, 8\] in the file, "
                                         r"\[3, 8\] in like; params/network/2/bias: .*; unexpected \[params/network/4\]"):
        checkpoint.load(tmp_path / "a.safetensors", like=other)


def test_load_like_names_another_optimizer_state(tmp_path):
    model = MLP(4, (8,), 3)
    checkpoint.save(tmp_path / "a.safetensors", TrainState.create(model, optim.adamw(lr=1e-3), random.key(0)))
    with pytest.raises(ValueError, match=r"config\?\): opt_state/0: a namedtuple "
                                         r"'deepfn.optim.adam:ScaleByAdamState' in the file, a namedtuple "
                                         r"'deepfn.optim.base:EmptyState' in like"):
        checkpoint.load(tmp_path / "a.safetensors", like=TrainState.create(model, optim.sgd(0.1, momentum=0.9),
                                                                          random.key(0)))


# --- planted files naming code: refused, and nothing runs ---------------------------------

def _digest(t):
    return hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy()).hexdigest()


def _plant(path, spec, tensors=None, fmt="2", digests=None):
    """A checkpoint crafted by hand with safetensors' own writer, its digests correct (the
    format is described in deepfn/checkpoint/files.py)."""
    tensors = tensors or {}
    header = {"deepfn.tree": json.dumps(spec), "deepfn.metadata": "{}", "deepfn.format": fmt}
    if fmt != "1":
        digests = {k: _digest(v) for k, v in tensors.items()} if digests is None else digests
        header["deepfn.digests"] = json.dumps(digests)
        header["deepfn.tensors"] = json.dumps({k: [str(v.dtype).removeprefix("torch."), list(v.shape)]
                                               for k, v in tensors.items()})
        covered = [header[k] for k in ("deepfn.format", "deepfn.tree", "deepfn.metadata", "deepfn.digests",
                                       "deepfn.tensors")]
        header["deepfn.header_digest"] = hashlib.sha256(json.dumps(covered).encode()).hexdigest()
    save_file(tensors, str(path), metadata=header)
    return path


def _value(v):
    return {"t": "value", "v": v}


def _malicious_specs(marker):
    command = f"touch {marker}"
    return {
        "os.system as a dataclass": {"t": "dataclass", "type": "os:system", "fields": {"command": _value(command)}},
        "os.system as a namedtuple": {"t": "namedtuple", "type": "os:system", "fields": ["command"],
                                      "items": [_value(command)]},
        "builtins.eval": {"t": "namedtuple", "type": "builtins:eval", "fields": ["source"],
                          "items": [_value(f"__import__('os').system({command!r})")]},
        "subprocess.Popen": {"t": "dataclass", "type": "subprocess:Popen",
                             "fields": {"args": _value(command), "shell": _value(True)}},
        "a module that runs on import": {"t": "namedtuple", "type": "evil_ckpt_module:Thing", "fields": [],
                                         "items": []},
        "deep inside a train state": {"t": "dict", "items": [
            ["params", {"t": "dict", "items": [["w", {"t": "tensor", "name": "params/w"}]]}],
            ["opt_state", {"t": "tuple", "items": [
                {"t": "namedtuple", "type": "os:system", "fields": ["command"], "items": [_value(command)]}]}]]},
    }


@pytest.fixture
def trap(tmp_path, monkeypatch):
    """A marker that any of the planted payloads would create, an importable module that would
    create it too, and every way to run code made to fail the test."""
    marker = tmp_path / "ran"
    (tmp_path / "evil_ckpt_module.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\nprint('evil module imported')\n"
        "class Thing(tuple):\n    _fields = ()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # deepfn's own types are looked up on first use; do it before the traps are set.
    checkpoint.save(tmp_path / "warm.safetensors", amp.DynamicLossScale())
    checkpoint.load(tmp_path / "warm.safetensors")

    def forbidden(*args, **kwargs):
        pytest.fail(f"code ran during load: {args!r}")
    real_import = builtins.__import__

    def guarded_import(name, *args, **kwargs):
        if name.startswith("evil_ckpt_module"):
            pytest.fail("the planted module was imported during load")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(importlib, "import_module", forbidden)
    monkeypatch.setattr(builtins, "__import__", guarded_import)
    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    monkeypatch.setattr(os, "system", forbidden)
    monkeypatch.setattr(subprocess, "Popen", forbidden)
    yield marker
    assert not marker.exists(), "a planted payload ran"
    assert "evil_ckpt_module" not in sys.modules


@pytest.mark.parametrize("case", list(_malicious_specs("x")))
def test_planted_type_names_are_refused_and_nothing_runs(tmp_path, trap, case):
    spec = _malicious_specs(trap)[case]
    path = _plant(tmp_path / "ckpt_000000009.safetensors", spec, {"params/w": torch.ones(2)})
    name = re.escape(spec["type"] if "type" in spec else "os:system")
    with pytest.raises(ValueError, match=rf"{re.escape(repr(str(path)))} names the type '{name}' at .*which is "
                                         r"not registered; call deepfn.checkpoint.register\(cls\)"):
        checkpoint.load(path)
    with pytest.raises(ValueError, match=r"not registered"):      # fit(resume=True) goes this way
        checkpoint.CheckpointManager(tmp_path).restore_latest()


def test_planted_type_names_with_like_are_only_compared(tmp_path, trap):
    spec = _malicious_specs(trap)["os.system as a namedtuple"]
    path = _plant(tmp_path / "a.safetensors", {"t": "dict", "items": [["opt", spec]]})
    like = {"opt": optim.EmptyState()}
    with pytest.raises(ValueError, match=r"opt: a namedtuple 'os:system' in the file, a namedtuple "
                                         r"'deepfn.optim.base:EmptyState' in like"):
        checkpoint.load(path, like=like)


_CHILD_LOADS_PLANTED = textwrap.dedent("""
    import json, sys
    from deepfn import checkpoint
    results = {}
    for path in sys.argv[1:]:
        try:
            checkpoint.load(path)
            results[path] = "loaded"
        except ValueError as err:
            results[path] = "ValueError: " + str(err)
    print(json.dumps(results))
""")


def test_planted_files_run_nothing_in_a_fresh_process(tmp_path):
    # No monkeypatching here: a real process, a real os.system, a real importable module.
    marker = tmp_path / "ran"
    (tmp_path / "evil_ckpt_module.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    paths = [str(_plant(tmp_path / f"{i}.safetensors", spec, {"params/w": torch.ones(2)}))
             for i, spec in enumerate(_malicious_specs(marker).values())]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _CHILD_LOADS_PLANTED, *paths], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(r.startswith("ValueError:") and "not registered" in r for r in results.values()), results
    assert not marker.exists()


# --- damaged files: named, never a raw SafetensorError --------------------------------------

def _span(path, name):
    """The byte range of tensor ``name``'s data in the file."""
    data = pathlib.Path(path).read_bytes()
    n = int.from_bytes(data[:8], "little")
    start, end = json.loads(data[8:8 + n])[name]["data_offsets"]
    return 8 + n + start, 8 + n + end


def _flip_byte(path, offset):
    path = pathlib.Path(path)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_flipped_data_byte_names_the_file_and_the_tensor(tmp_path):
    path = tmp_path / "a.safetensors"
    checkpoint.save(path, {"params": {"w": torch.randn(4, 4), "b": torch.zeros(4)}})
    start, end = _span(path, "params/w")
    _flip_byte(path, (start + end) // 2)
    with pytest.raises(checkpoint.DamagedCheckpointError,
                       match=rf"{re.escape(repr(str(path)))} is damaged: the bytes of the tensor 'params/w' do "
                             "not match their SHA-256 digest"):
        checkpoint.load(path)


def test_flipped_byte_of_a_one_byte_tensor_is_caught(tmp_path):
    path = tmp_path / "a.safetensors"
    checkpoint.save(path, {"mask": torch.tensor([True, False]), "n": torch.tensor(3, dtype=torch.int8)})
    _flip_byte(path, _span(path, "n")[0])
    with pytest.raises(ValueError, match=r"the tensor 'n' do not match"):
        checkpoint.load(path)


def test_flipped_header_byte_names_the_file(tmp_path):
    path = tmp_path / "a.safetensors"
    checkpoint.save(path, {"w": torch.ones(2)})
    _flip_byte(path, 9)            # inside the JSON header
    with pytest.raises(ValueError, match=rf"{re.escape(repr(str(path)))} is damaged"):
        checkpoint.load(path)


@pytest.mark.parametrize("keep", [0, 4, 8, 40, "half", "all but one"])
def test_truncated_file_names_the_file(tmp_path, keep):
    path = tmp_path / "a.safetensors"
    checkpoint.save(path, {"w": torch.randn(64)})
    data = path.read_bytes()
    keep = {"half": len(data) // 2, "all but one": len(data) - 1}.get(keep, keep)
    path.write_bytes(data[:keep])
    for read in (checkpoint.load, checkpoint.load_metadata):
        with pytest.raises(checkpoint.DamagedCheckpointError, match=rf"{re.escape(repr(str(path)))} is damaged: "):
            read(path)


def test_extended_file_names_the_file(tmp_path):
    path = tmp_path / "a.safetensors"
    checkpoint.save(path, {"w": torch.randn(4)})
    path.write_bytes(path.read_bytes() + b"\0" * 16)
    with pytest.raises(ValueError, match=r"is damaged: its header describes \d+ bytes but the file has"):
        checkpoint.load(path)


def test_file_that_is_not_safetensors_names_the_file(tmp_path):
    path = tmp_path / "a.safetensors"
    path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=rf"{re.escape(repr(str(path)))} is damaged"):
        checkpoint.load(path)


def test_malformed_tree_names_the_file_and_the_path(tmp_path):
    spec = {"t": "dict", "items": [["a", {"t": "list", "items": [{"t": "mystery"}]}]]}
    path = _plant(tmp_path / "a.safetensors", spec)
    with pytest.raises(ValueError, match=r"is damaged: its tree at a/0 has the unknown node kind 'mystery'"):
        checkpoint.load(path)


def test_tree_naming_an_absent_tensor_names_it(tmp_path):
    path = _plant(tmp_path / "a.safetensors", {"t": "tensor", "name": "w"}, {"v": torch.ones(1)})
    with pytest.raises(ValueError, match=r"is damaged: its tree at <root> names the tensor 'w', which is not"):
        checkpoint.load(path)


def test_tensor_without_digest_is_damage(tmp_path):
    path = _plant(tmp_path / "a.safetensors", {"t": "tensor", "name": "w"}, {"w": torch.ones(1)}, digests={})
    with pytest.raises(ValueError, match=r"the tensor 'w' has no digest"):
        checkpoint.load(path)


def test_unknown_format_is_named(tmp_path):
    path = _plant(tmp_path / "a.safetensors", {"t": "value", "v": 1}, fmt="9")
    with pytest.raises(ValueError, match=r"has the checkpoint format '9'; this deepfn reads \['1', '2'\]"):
        checkpoint.load(path)


def test_format_1_file_loads_with_a_warning(tmp_path):
    # A checkpoint as deepfn wrote it before digests: same tree, format "1", no digests.
    ts = _train_state()
    path = _plant(tmp_path / "old.safetensors", *_spec_and_tensors(tmp_path, ts), fmt="1")
    with pytest.warns(UserWarning, match=r"format-1 checkpoint without tensor digests; its tensors cannot be "
                                         r"verified"):
        back = checkpoint.load(path)
    assert tree.all_equal(back, ts)


def _spec_and_tensors(tmp_path, t):
    checkpoint.save(tmp_path / "new.safetensors", t)
    with safe_open(str(tmp_path / "new.safetensors"), framework="pt") as f:
        return json.loads(f.metadata()["deepfn.tree"]), {k: f.get_tensor(k) for k in f.keys()}


# --- the manager: newest good checkpoint, damaged files skipped -----------------------------

def _manager_with_steps(tmp_path, steps=(1, 2, 3)):
    m = checkpoint.CheckpointManager(tmp_path, keep_last=10)
    for s in steps:
        m.save(s, {"w": torch.full((8,), float(s)), "step": s}, metrics={"val_loss": float(10 - s)})
    return m


def test_restore_latest_returns_the_newest(tmp_path):
    step, t = _manager_with_steps(tmp_path).restore_latest()
    assert step == 3 and t["step"] == 3 and t["w"].tolist() == [3.0] * 8


def test_restore_latest_of_an_empty_directory_is_none(tmp_path):
    assert checkpoint.CheckpointManager(tmp_path).restore_latest() is None


def test_restore_latest_skips_damaged_files_with_warnings(tmp_path):
    m = _manager_with_steps(tmp_path)
    _flip_byte(m.path(3), _span(m.path(3), "w")[0])
    with open(m.path(2), "r+b") as f:
        f.truncate(50)
    with pytest.warns(UserWarning) as caught:
        step, t = m.restore_latest(like={"w": torch.zeros(8), "step": 0})
    assert step == 1 and t["w"].tolist() == [1.0] * 8
    messages = [str(w.message) for w in caught]
    assert any(m.path(3) in s and "'w' do not match their SHA-256" in s for s in messages), messages
    assert any(m.path(2) in s and "is damaged" in s for s in messages), messages


def test_restore_latest_when_all_are_damaged_raises(tmp_path):
    m = _manager_with_steps(tmp_path, steps=(1,))
    with open(m.path(1), "r+b") as f:
        f.truncate(20)
    with pytest.warns(UserWarning, match="is damaged"), \
            pytest.raises(ValueError, match=r"restore_latest: every checkpoint in .* is damaged \(1: "):
        m.restore_latest()


def test_restore_latest_of_another_model_raises_at_once(tmp_path, recwarn):
    m = _manager_with_steps(tmp_path)
    with pytest.raises(ValueError, match=r"ckpt_000000003.safetensors' does not match `like` \(another model or "
                                         r"config\?\): w: shape \[8\] in the file, \[4\] in like"):
        m.restore_latest(like={"w": torch.zeros(4), "step": 0})
    assert not recwarn.list        # not treated as damage: no fallback to older files


def test_best_step_skips_damaged_files_with_a_warning(tmp_path):
    m = _manager_with_steps(tmp_path)             # val_loss 9, 8, 7: step 3 is best
    with open(m.path(3), "r+b") as f:
        f.truncate(30)
    with pytest.warns(UserWarning, match=r"best_step: skipping a damaged checkpoint: .*ckpt_000000003"):
        assert m.best_step() == 2


def test_manager_metadata_of_a_damaged_file_names_it(tmp_path):
    m = _manager_with_steps(tmp_path)
    with open(m.path(2), "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match=rf"load_metadata: {re.escape(repr(m.path(2)))} is damaged"):
        m.metadata(2)


def test_load_like_without_a_loss_scale_names_it(tmp_path):
    model, opt = MLP(4, (8,), 3), optim.sgd(0.1)
    checkpoint.save(tmp_path / "a.safetensors", TrainState.create(model, opt, random.key(0),
                                                                  loss_scale=amp.DynamicLossScale()))
    with pytest.raises(ValueError, match=r"config\?\): loss_scale: a dataclass "
                                         r"'deepfn.amp.loss_scale:DynamicLossScale' in the file, None in like$"):
        checkpoint.load(tmp_path / "a.safetensors", like=TrainState.create(model, opt, random.key(0)))


def test_every_changed_byte_is_caught(tmp_path):
    # One bit of every byte: the length prefix, the safetensors header, deepfn's entries,
    # the tensor bytes. Each load raises a ValueError naming the file; none loads silently.
    path = tmp_path / "a.safetensors"
    checkpoint.save(path, {"p": {"w": torch.randn(2, 3), "b": torch.zeros(3, dtype=torch.bfloat16)},
                           "step": 3, "n": torch.tensor(5)}, metadata={"epoch": 2})
    good = path.read_bytes()
    silent, other = [], []
    for i in range(len(good)):
        changed = bytearray(good)
        changed[i] ^= 0x10
        path.write_bytes(bytes(changed))
        try:
            checkpoint.load(path)
            silent.append(i)
        except checkpoint.DamagedCheckpointError as err:
            assert repr(str(path)) in str(err)
        except ValueError as err:       # the format's digit itself: "saved by a newer deepfn?"
            other.append((i, str(err)))
    assert not silent, f"changed bytes at {silent[:20]} loaded without an error"
    assert all("checkpoint format" in e for _, e in other) and len(other) <= 1, other


def test_changed_metadata_is_caught_by_load_metadata(tmp_path):
    m = checkpoint.CheckpointManager(tmp_path)
    m.save(0, {"w": torch.ones(2)}, metrics={"val_loss": 0.5})
    data = pathlib.Path(m.path(0)).read_bytes()
    pathlib.Path(m.path(0)).write_bytes(data.replace(b'val_loss\\": 0.5', b'val_loss\\": 0.1'))
    assert pathlib.Path(m.path(0)).read_bytes() != data
    with pytest.raises(ValueError, match=r"is damaged: its header .* does not match the SHA-256 digest"):
        m.metadata(0)

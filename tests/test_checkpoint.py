"""deepfn.checkpoint: exact round trips of whole trees, atomic writes, the manager, and
training resumed from a checkpoint continuing bit for bit."""

import os
from typing import NamedTuple

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from deepfn import amp, checkpoint, losses, optim, random, tree
from deepfn.models import MLP
from deepfn.train import TrainState, make_train_step


@checkpoint.register          # a user type: load rebuilds only registered ones
class Pair(NamedTuple):
    first: torch.Tensor
    second: object


def _tree():
    return {
        "params": {"w": torch.randn(3, 4), "b": torch.zeros(4, dtype=torch.bfloat16)},
        "ids": torch.arange(5), "mask": torch.tensor([True, False]), "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": {}, "none": None, "int": 7, "float": 0.1, "inf": float("inf"), "flag": True, "name": "run-1",
        "list": [torch.ones(2), [], ()], "tuple": (1, torch.full((1,), 3.0)), "pair": Pair(torch.ones(1), None),
        "view": torch.arange(10.0)[::2], "zero_size": torch.empty(0, 3),
    }


def test_round_trip_keeps_containers_and_bits(tmp_path):
    t = _tree()
    t["alias"] = t["params"]["w"]          # shared storage is stored twice, not refused
    checkpoint.save(tmp_path / "a.safetensors", t)
    back = checkpoint.load(tmp_path / "a.safetensors")
    assert tree.all_equal(back, t)
    assert type(back["pair"]) is Pair and type(back["tuple"]) is tuple and type(back["list"][1]) is list
    assert back["empty"] == {} and back["none"] is None and back["name"] == "run-1"
    assert back["inf"] == float("inf") and back["float"] == 0.1


def test_each_tensor_is_its_own_entry(tmp_path):
    checkpoint.save(tmp_path / "a.safetensors", {"p": {"w": torch.ones(2, 3)}, "s": [torch.arange(4)]})
    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == ["p/w", "s/0"]
        assert f.get_tensor("p/w").shape == (2, 3) and f.get_tensor("s/0").dtype == torch.int64


def test_train_state_round_trips_exactly(tmp_path):
    model, opt = MLP(4, (8,), 3, batch_norm=True), optim.adamw(lr=1e-3)
    ls = amp.DynamicLossScale(init_scale=8.0, growth_interval=5, growth_factor=4.0, backoff_factor=0.25)
    ts = TrainState.create(model, opt, random.key(0), loss_scale=ls).replace(step=torch.tensor(12))
    checkpoint.save(tmp_path / "ts.safetensors", ts, metadata={"step": 12, "config": {"lr": 1e-3}})
    back = checkpoint.load(tmp_path / "ts.safetensors")
    assert isinstance(back, TrainState) and isinstance(back.loss_scale, amp.DynamicLossScale)
    assert type(back.opt_state) is type(ts.opt_state)
    assert tree.all_equal(back, ts)
    meta = checkpoint.load_metadata(tmp_path / "ts.safetensors")
    assert meta["step"] == 12 and meta["config"] == {"lr": 1e-3}
    assert meta["versions"]["torch"] == torch.__version__


def test_resumed_training_is_bit_identical(tmp_path):
    model, opt = MLP(4, (8,), 3, dropout_rate=0.2, batch_norm=True), optim.adamw(lr=1e-2)
    step = make_train_step(model, losses.cross_entropy, opt, loss_scale=amp.DynamicLossScale(), compile=False)
    base = random.key(3)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(6)]

    def run(ts, lo, hi):
        for i in range(lo, hi):
            ts, _ = step(ts, batches[i], random.fold_in(base, int(ts.step)))
        return ts

    start = TrainState.create(model, opt, random.key(0))
    straight = run(start, 0, 6)
    half = run(start, 0, 3)
    checkpoint.save(tmp_path / "mid.safetensors", half)
    resumed = run(checkpoint.load(tmp_path / "mid.safetensors"), 3, 6)
    assert tree.all_equal(resumed, straight)


def test_crash_mid_write_keeps_the_last_good_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    good = {"w": torch.ones(3)}
    checkpoint.save(path, good)

    def boom(fd):
        raise OSError("disk full")
    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, {"w": torch.zeros(3)})
    monkeypatch.undo()
    assert tree.all_equal(checkpoint.load(path), good)
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]      # no temporary file left behind


def test_manager_keeps_last_k_and_best(tmp_path):
    m = checkpoint.CheckpointManager(tmp_path, keep_last=2, keep_best=True, monitor="val_loss", mode="min")
    losses_by_step = {0: 3.0, 1: 0.5, 2: 2.0, 3: 1.0, 4: 4.0}
    for s, v in losses_by_step.items():
        m.save(s, {"w": torch.full((2,), float(s))}, metrics={"val_loss": v})
    assert m.steps() == [1, 3, 4] and m.best_step() == 1 and m.latest_step() == 4
    assert m.restore()["w"].tolist() == [4.0, 4.0]
    assert m.restore(1)["w"].tolist() == [1.0, 1.0]
    assert m.metadata(3)["metrics"] == {"val_loss": 1.0}
    # A new manager over the same directory resumes from what is on disk.
    again = checkpoint.CheckpointManager(tmp_path, keep_last=2, mode="min")
    assert again.latest_step() == 4 and again.best_step() == 1


def test_manager_mode_max_and_no_best(tmp_path):
    m = checkpoint.CheckpointManager(tmp_path / "max", keep_last=1, monitor="acc", mode="max")
    for s, v in enumerate([0.2, 0.9, 0.5]):
        m.save(s, {"s": s}, metrics={"acc": v})
    assert m.steps() == [1, 2]
    n = checkpoint.CheckpointManager(tmp_path / "plain", keep_last=1, keep_best=False)
    for s in range(3):
        n.save(s, {"s": s}, metrics={"val_loss": float(-s)})
    assert n.steps() == [2]


def test_manager_restore_missing_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"CheckpointManager: no checkpoint for step None"):
        checkpoint.CheckpointManager(tmp_path).restore()


def test_manager_rejects_bad_keep_last(tmp_path):
    with pytest.raises(ValueError, match=r"CheckpointManager: keep_last must be a positive int; got 0"):
        checkpoint.CheckpointManager(tmp_path, keep_last=0)


def test_manager_rejects_bad_mode(tmp_path):
    with pytest.raises(ValueError, match=r"CheckpointManager: mode must be one of \['min', 'max'\]; got 'low'"):
        checkpoint.CheckpointManager(tmp_path, mode="low")


def test_save_rejects_unstorable_leaf(tmp_path):
    with pytest.raises(TypeError, match=r"deepfn.checkpoint.save: cannot store a object at a/0"):
        checkpoint.save(tmp_path / "x.safetensors", {"a": [object()]})


def test_save_rejects_non_str_keys(tmp_path):
    with pytest.raises(TypeError, match=r"deepfn.checkpoint.save: dict keys must be str; got 1"):
        checkpoint.save(tmp_path / "x.safetensors", {1: torch.ones(1)})


def test_save_rejects_non_json_metadata(tmp_path):
    with pytest.raises(TypeError, match=r"deepfn.checkpoint.save: metadata must be JSON-serialisable"):
        checkpoint.save(tmp_path / "x.safetensors", {}, metadata={"t": torch.ones(1)})


def test_load_rejects_foreign_safetensors(tmp_path):
    save_file({"w": torch.ones(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match=r"deepfn.checkpoint.load: .* without a deepfn tree"):
        checkpoint.load(tmp_path / "plain.safetensors")

"""deepfn.checkpoint: exact round trips of whole trees, atomic writes, the manager, and
training resumed from a checkpoint continuing bit for bit."""

import dataclasses
import importlib
import os
import pkgutil
import re
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


# --- the allow-list: deepfn's own types, and the user's registered ones ---------------------

@dataclasses.dataclass(frozen=True)
class EmaState:
    decay: float
    shadow: dict


class Running(NamedTuple):
    mean: torch.Tensor
    count: int


def test_register_round_trips_a_user_dataclass_and_namedtuple(tmp_path):
    assert checkpoint.register(EmaState) is EmaState and checkpoint.register(Running) is Running
    t = {"ema": EmaState(0.99, {"w": torch.randn(3)}), "run": Running(torch.zeros(2), 5)}
    checkpoint.save(tmp_path / "a.safetensors", t)
    back = checkpoint.load(tmp_path / "a.safetensors")
    assert type(back["ema"]) is EmaState and type(back["run"]) is Running
    assert back["ema"].decay == 0.99 and torch.equal(back["ema"].shadow["w"], t["ema"].shadow["w"])
    assert torch.equal(back["run"].mean, t["run"].mean) and back["run"].count == 5


def test_register_works_as_a_decorator(tmp_path):
    @checkpoint.register
    class Local(NamedTuple):
        x: torch.Tensor
    checkpoint.save(tmp_path / "a.safetensors", Local(torch.ones(1)))
    assert type(checkpoint.load(tmp_path / "a.safetensors")) is Local


def test_unregistered_user_type_raises_naming_it(tmp_path):
    class Unknown(NamedTuple):
        x: torch.Tensor
    checkpoint.save(tmp_path / "a.safetensors", {"u": Unknown(torch.ones(1))})
    name = f"{__name__}:test_unregistered_user_type_raises_naming_it.<locals>.Unknown"
    with pytest.raises(ValueError, match=rf"names the type '{re.escape(name)}' at u, which is not registered; "
                                         r"call deepfn.checkpoint.register\(cls\) for your own types"):
        checkpoint.load(tmp_path / "a.safetensors")


def test_unregistered_user_type_loads_with_like(tmp_path):
    @dataclasses.dataclass
    class Unknown:
        x: torch.Tensor
    checkpoint.save(tmp_path / "a.safetensors", Unknown(torch.arange(3.0)))
    back = checkpoint.load(tmp_path / "a.safetensors", like=Unknown(torch.zeros(3)))
    assert type(back) is Unknown and back.x.tolist() == [0.0, 1.0, 2.0]


def test_registered_class_with_other_fields_is_named(tmp_path):
    class Versioned(NamedTuple):
        a: torch.Tensor
    checkpoint.register(Versioned)
    checkpoint.save(tmp_path / "a.safetensors", Versioned(torch.ones(1)))

    class Versioned(NamedTuple):   # noqa: F811  (the same name, a later version with another field)
        a: torch.Tensor
        b: torch.Tensor
    checkpoint.register(Versioned)
    with pytest.raises(ValueError, match=r"with the fields \['a'\]; the registered class has \['a', 'b'\]"):
        checkpoint.load(tmp_path / "a.safetensors")


@pytest.mark.parametrize("bad, message", [
    (Running(torch.ones(1), 1), r"expected a NamedTuple class or a dataclass; got Running"),
    ("os:system", r"expected a NamedTuple class or a dataclass; got str 'os:system'"),
    (dict, r"expected a NamedTuple class or a dataclass; got the class builtins:dict, which is neither"),
    (type("Plain", (), {}), r"expected a NamedTuple class or a dataclass; got the class .*Plain, which is neither"),
])
def test_register_rejects_what_is_not_a_namedtuple_or_dataclass(bad, message):
    with pytest.raises(TypeError, match=rf"deepfn.checkpoint.register: {message}"):
        checkpoint.register(bad)


def test_register_rejects_a_dataclass_with_init_false_fields():
    @dataclasses.dataclass
    class Derived:
        x: int
        y: int = dataclasses.field(init=False, default=0)
    with pytest.raises(TypeError, match=r"has fields that __init__ does not take \(\['y'\]\)"):
        checkpoint.register(Derived)


def _state_classes(module):
    return {obj for obj in vars(module).values()
            if isinstance(obj, type) and obj.__module__.startswith("deepfn.")
            and (issubclass(obj, tuple) and hasattr(obj, "_fields") or dataclasses.is_dataclass(obj))}


def test_every_deepfn_state_class_is_registered(tmp_path):
    # A new optimizer state (or loss scale) must be added to the allow-list in
    # deepfn/checkpoint/registry.py, or checkpoints holding it would not load.
    from deepfn.checkpoint.registry import registered_type, type_name
    found = {TrainState}
    for package in (optim, amp):
        for info in pkgutil.iter_modules(package.__path__):
            found |= _state_classes(importlib.import_module(f"{package.__name__}.{info.name}"))
    found.discard(optim.GradientTransformation)        # functions, never stored
    found.discard(amp.Policy)                           # dtypes, never stored
    missing = sorted(type_name(c) for c in found if registered_type(type_name(c)) is not c)
    assert not missing, f"not registered for checkpoints: {missing}"


@pytest.mark.parametrize("make_opt", [
    lambda: optim.sgd(0.1), lambda: optim.sgd(0.1, momentum=0.9, nesterov=True), lambda: optim.adam(1e-3),
    lambda: optim.adamw(optim.cosine_decay(1e-3, 10)),
    lambda: optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(1e-3)),
], ids=["sgd", "nesterov", "adam", "adamw-schedule", "clipped-adamw"])
def test_optimizer_states_round_trip_without_like(tmp_path, make_opt):
    model, opt = MLP(4, (8,), 3), make_opt()
    ts = TrainState.create(model, opt, random.key(0), loss_scale=amp.DynamicLossScale())
    checkpoint.save(tmp_path / "a.safetensors", ts)
    back = checkpoint.load(tmp_path / "a.safetensors")
    assert tree.all_equal(back, ts) and tree.structure(back) == tree.structure(ts)


# --- checkpoint metrics are numbers ---------------------------------------------------------

def test_manager_accepts_one_element_tensor_metrics(tmp_path):
    m = checkpoint.CheckpointManager(tmp_path)
    m.save(0, {"w": torch.ones(1)}, metrics={"val_loss": torch.tensor([0.25]), "acc": 1})
    assert m.metadata(0)["metrics"] == {"val_loss": 0.25, "acc": 1.0}


@pytest.mark.parametrize("metrics, error, message", [
    ({"val_loss": "low"}, TypeError, r"metrics\['val_loss'\] must be a number .*; got str 'low'"),
    ({"val_loss": None}, TypeError, r"metrics\['val_loss'\] must be a number .*; got NoneType None"),
    ({"val_loss": torch.ones(2)}, ValueError, r"metrics\['val_loss'\] must be a number; got a tensor of shape "
                                              r"\[2\] \(2 elements\)"),
    ({"val_loss": torch.tensor(1 + 2j)}, TypeError, r"metrics\['val_loss'\] must be a number .*; got complex"),
    ({"val_loss": [0.1]}, TypeError, r"metrics\['val_loss'\] must be a number .*; got list"),
    ([("val_loss", 0.1)], TypeError, r"metrics must be a dict of numbers or None; got list"),
    ({1: 0.1}, TypeError, r"metric names must be str; got 1"),
], ids=["str", "None", "tensor-2", "complex", "list", "not-a-dict", "int-key"])
def test_manager_rejects_non_numeric_metrics(tmp_path, metrics, error, message):
    m = checkpoint.CheckpointManager(tmp_path)
    with pytest.raises(error, match=rf"CheckpointManager.save: {message}"):
        m.save(0, {"w": torch.ones(1)}, metrics=metrics)
    assert m.steps() == []             # nothing written

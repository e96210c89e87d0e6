"""Compiled steps drop Dynamo's guards on torch's and deepfn's globals and keep every other guard:
the user's globals still recompile the step when they change, inputs still are checked."""

import sys
from types import SimpleNamespace

import pytest
import torch

from deepfn import losses, optim, random
from deepfn.models import MLP
from deepfn.train import TrainState, make_train_step
from deepfn.train.compile import first_call
from deepfn.train.compile.guard_filter import library_globals_unguarded

SCALE = 1.0          # read by _scaled_loss while a step is traced: a user global
REDUCE = torch.mean


def _scaled_loss(logits, labels):
    return SCALE * losses.cross_entropy(logits, labels) + 0.01 * REDUCE(logits.abs())


def _entry(name, is_global=True):
    return SimpleNamespace(name=name, is_global=is_global, guard_type="ID_MATCH")


def _kept(fn, *names):
    return library_globals_unguarded(fn)([_entry(n) for n in names])


def _deepfn_fn():
    pass


_deepfn_fn.__module__ = "deepfn.train.step"


@pytest.mark.parametrize("name, kept", [
    ("G['__import_torch_dot__functorch_dot_eager_transforms'].grad_and_value_impl", False),
    ("G['__import_torch']", False),
    ("G['__import_deepfn_dot_optim_dot_adam'].ScaleByAdamState", False),
    ("dict(G['__import_deepfn_dot_optim_dot_adam'].ScaleByAdamState.__dict__)['__new__'].__func__", False),
    ("G['__builtins_dict___0']['isinstance']", False),
    ("G['__import_tests_dot_train_dot_compile_dot_test_guard_filter'].SCALE", True),
    ("G['__import_torchvision_dot_ops'].nms", True),    # a library whose name starts with torch
    ("G['__import_deepfnx'].f", True),
    ("G['torch'].backends.cudnn.enabled", True),
    ("G['___unnamed_scope_1_c0']['_tuple_new']", True),
    ("ts.params['w']", True),
])
def test_which_guards_are_kept(name, kept):
    assert _kept(_deepfn_fn, name) == [kept]


def test_a_global_of_the_compiled_function_own_module_counts_as_library_only_for_deepfn():
    assert _kept(_deepfn_fn, "G['torch'].func.grad") == [False]
    assert _kept(_scaled_loss, "G['torch'].func.grad", "G['SCALE']") == [True, True]


def test_guards_that_are_not_on_globals_are_all_kept():
    keep = library_globals_unguarded(_deepfn_fn)
    entries = [_entry("G['__import_torch'].add", is_global=False), _entry("L['x']", is_global=False)]
    assert keep(entries) == [True, True]


def _setup():
    model, opt = MLP(6, (8,), 3), optim.adam(lr=1e-2)
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g))
    return model, opt, TrainState.create(model, opt, random.key(0)), batch


def test_a_compiled_step_keeps_its_input_guards_and_drops_the_library_globals(monkeypatch):
    decisions = []
    real = first_call.library_globals_unguarded

    def spy(fn):
        keep = real(fn)

        def recorded(entries):
            kept = keep(entries)
            decisions.extend(zip(entries, kept, strict=True))
            return kept
        return recorded

    monkeypatch.setattr(first_call, "library_globals_unguarded", spy)
    model, opt, ts, batch = _setup()
    make_train_step(model, _scaled_loss, opt)(ts, batch, None)
    dropped = [e.name for e, k in decisions if not k]
    kept = [e for e, k in decisions if k]
    assert any("__import_torch_dot__functorch" in n for n in dropped)
    assert any("__import_deepfn_dot_optim" in n for n in dropped)
    assert any(e.guard_type == "TENSOR_MATCH" and e.name.startswith("ts.params") for e in kept)
    assert any("SCALE" in e.name and e.is_global for e in kept)
    assert not any(e.is_global and ("__import_torch_dot_" in e.name or "__import_deepfn_dot_" in e.name)
                   for e in kept)


def test_changing_a_user_global_still_recompiles_the_step(monkeypatch):
    model, opt, ts, batch = _setup()
    step = make_train_step(model, _scaled_loss, opt)
    eager = make_train_step(model, _scaled_loss, opt, compile=False)
    seen = []
    for name, value in [("SCALE", 1.0), ("SCALE", 3.0), ("REDUCE", torch.sum)]:
        monkeypatch.setattr(sys.modules[__name__], name, value)
        loss = step(ts, batch, None)[1]["loss"]
        torch.testing.assert_close(loss, eager(ts, batch, None)[1]["loss"])
        seen.append(float(loss))
    assert len(set(seen)) == 3


def test_another_batch_size_still_recompiles_the_step():
    model, opt, ts, batch = _setup()
    step = make_train_step(model, losses.cross_entropy, opt)
    eager = make_train_step(model, losses.cross_entropy, opt, compile=False)
    step(ts, batch, None)
    half = (batch[0][:4], batch[1][:4])
    torch.testing.assert_close(step(ts, half, None)[1]["loss"], eager(ts, half, None)[1]["loss"])

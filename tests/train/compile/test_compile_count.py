"""``compiled_programs()`` of compiled steps and fit's ``train_compiles`` / ``eval_compiles``: every
program compiled or loaded counts once, guard variants included, which batch signatures miss."""

import pytest
import torch

from deepfn import _torch, losses, optim, random
from deepfn._torch import gate
from deepfn.nn import Dense
from deepfn.train import TrainState, fit, make_eval_step, make_train_step
from deepfn.train.compile import CompileOnFirstCall, SavedCompile
from deepfn.train.compile.dynamic import DynamicDims
from deepfn.train.compile.own_code import with_own_code
from deepfn.train.compile.signatures import CompileCount


@pytest.fixture(autouse=True, scope="module")
def private_cache_root(tmp_path_factory):
    """deepfn's cache root (the secret key that signs saved steps) in a fresh folder."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DEEPFN_CACHE_DIR", str(tmp_path_factory.mktemp("deepfn-cache")))
        yield


def _branchy(x):
    """A program with a guard on a symbolic size (``width > 8``): two variants serve all widths."""
    return x.sum() if x.shape[1] > 8 else x.mean()


def test_a_saved_step_counts_each_variant_compiled_then_each_loaded(tmp_path):
    dynamic = DynamicDims((0,), (1,))
    for run in range(2):   # run 0 compiles both variants, run 1 (a new step) loads both
        fn = SavedCompile(with_own_code(_branchy), tmp_path, "t", training=False, dynamic=dynamic)
        assert fn.compiled_programs() == 0
        counts = []
        for width in (4, 6, 12, 20, 5):
            fn(torch.randn(3, width))
            counts.append(fn.compiled_programs())
        assert counts == [1, 1, 2, 2, 2], run


def test_a_plain_compiled_step_counts_dynamos_compiles():
    fn = CompileOnFirstCall(with_own_code(lambda x: (x * 2).sum()), training=False)
    counts = []
    for width in (4, 4, 12, 20):   # a static compile, then one with symbolic sizes for the rest
        fn(torch.randn(3, width))
        counts.append(fn.compiled_programs())
    assert counts == [1, 1, 2, 2]


def test_with_the_hook_off_a_plain_step_does_not_count(monkeypatch):
    off = gate.Gate(torch.__version__)
    off.off["compile_count"] = "test"
    monkeypatch.setattr(gate, "GATE", off)
    assert _torch.graphs_compiled() is None
    fn = CompileOnFirstCall(with_own_code(lambda x: x + 1), training=False)
    torch.testing.assert_close(fn(torch.zeros(2)), torch.ones(2))
    assert fn.compiled_programs() is None and CompileCount(fn).take_new() is None


def _model():
    model, opt = Dense(6, 3), optim.adamw(lr=0.05)
    return model, opt, TrainState.create(model, opt, random.key(0))


def _batch(width, n=4):
    g = torch.Generator().manual_seed(width)
    return torch.randn(n, width, 6, generator=g), torch.randint(0, 3, (n, width), generator=g)


def _trimmed_to(widths):
    """A ``batch_fn`` that cuts each batch to the next of ``widths`` (cycling), as token batches
    trimmed to their longest row."""
    widths = iter(list(widths) * 10)

    def trimmed(xb, yb):
        w = next(widths)
        return xb[:, :w], yb[:, :w]
    return trimmed


@pytest.mark.parametrize("mode, cached", [(True, False), (True, True), ("split", True), (False, False)],
                         ids=["plain", "compile_cache", "split", "eager"])
def test_train_and_eval_steps_count_their_programs(tmp_path, mode, cached):
    model, opt, ts = _model()
    cache = tmp_path if cached else None
    step = make_train_step(model, losses.cross_entropy, opt, compile=mode, compile_cache=cache, dynamic_dims=(1,))
    ev = make_eval_step(model, losses.cross_entropy, compile=bool(mode), compile_cache=cache, dynamic_dims=(1,))
    for width in (5, 9, 3):
        step(ts, _batch(width), random.key(width))
        ev(ts.params, ts.state, _batch(width))
    expected = 1 if mode else 0   # one program for every width; an eager step compiles nothing
    assert step.compiled_programs() == expected and ev.compiled_programs() == expected


def test_fit_records_the_programs_each_epoch_compiled():
    model, opt, ts = _model()
    step = make_train_step(model, losses.cross_entropy, opt, dynamic_dims=(1,))
    ev = make_eval_step(model, losses.cross_entropy, dynamic_dims=(1,))
    x, y = _batch(12, n=16)
    _, history = fit(step, ts, (x, y), epochs=2, batch_size=4, key=random.key(0), eval_step=ev, val_data=(x, y),
                     batch_fn=_trimmed_to([3, 5, 7, 9]), progress=False)
    assert [r["train_compiles"] for r in history.rows] == [1, 0]
    assert [r["eval_compiles"] for r in history.rows] == [1, 0]


def test_fit_counts_a_guard_variant_that_signatures_miss():
    """A step that compiles a second program for a size its first one's guards reject: one new
    signature (the size is symbolic), two compiles."""
    model, opt, ts = _model()
    eager = make_train_step(model, losses.cross_entropy, opt, compile=False, dynamic_dims=(1,))
    programs = set()

    def step(train_state, batch, key):   # stands in for a program with the guard width > 8
        programs.add(batch[0].shape[1] > 8)
        return eager(train_state, batch, key)
    step.dynamic_dims = (1,)
    step.compiled_programs = lambda: len(programs)
    x, y = _batch(12, n=16)
    _, history = fit(step, ts, (x, y), epochs=2, batch_size=4, key=random.key(0), batch_fn=_trimmed_to([3, 10, 5, 11]),
                     progress=False)
    assert [r["train_new_signatures"] for r in history.rows] == [1, 0]
    assert [r["train_compiles"] for r in history.rows] == [2, 0]


def test_steps_that_do_not_count_leave_the_column_out():
    model, opt, ts = _model()
    eager = make_train_step(model, losses.cross_entropy, opt, compile=False)

    def step(train_state, batch, key):   # a hand-written step: no compiled_programs attribute
        return eager(train_state, batch, key)
    x, y = _batch(4, n=8)
    _, history = fit(step, ts, (x, y), epochs=1, batch_size=4, key=random.key(0), progress=False)
    assert "train_compiles" not in history.rows[0] and "eval_compiles" not in history.rows[0]
    assert CompileCount(step).take_new() is None

"""``dynamic_dims`` of make_train_step / make_eval_step: one compile (and one saved file) for
every size of the chosen batch dims, the same numbers as the eager step, compile events counted
without those sizes, and every bad value rejected."""

import warnings

import pytest
import torch

from deepfn import _torch, losses, optim, random
from deepfn._torch import gate
from deepfn.nn import Dense
from deepfn.train import TrainState, fit, make_eval_step, make_train_step
from deepfn.train.compile import SavedCompile
from deepfn.train.compile.dynamic import DynamicDims, check_dynamic_dims, symbolic_dims
from deepfn.train.compile.own_code import with_own_code
from deepfn.train.compile.signatures import SignatureLog, batch_signature
from tests.utils import assert_trees_close

WIDTHS = (5, 9, 3, 12)


@pytest.fixture(autouse=True, scope="module")
def private_cache_root(tmp_path_factory):
    """deepfn's cache root (the secret key that signs saved steps) in a fresh folder."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DEEPFN_CACHE_DIR", str(tmp_path_factory.mktemp("deepfn-cache")))
        yield


def _traced_graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def _tokens(width, n=4, seed=0):
    """``(x [n, width, 6], y [n, width])``: per-position features and labels, like a token batch."""
    g = torch.Generator().manual_seed(seed + width)
    return torch.randn(n, width, 6, generator=g), torch.randint(0, 3, (n, width), generator=g)


def _model():
    model, opt = Dense(6, 3), optim.adamw(lr=0.05)   # per position: [n, width, 6] -> [n, width, 3]
    return model, opt, TrainState.create(model, opt, random.key(0))


@pytest.mark.parametrize("cached, mode", [(False, True), (True, True), (True, "split")],
                         ids=["plain", "compile_cache", "split"])
def test_one_compile_serves_every_width_with_the_eager_numbers(tmp_path, cached, mode):
    model, opt, ts = _model()
    cache = tmp_path if cached else None
    step = make_train_step(model, losses.cross_entropy, opt, compile=mode, compile_cache=cache, dynamic_dims=(1,))
    eager = make_train_step(model, losses.cross_entropy, opt, compile=False)
    ev = make_eval_step(model, losses.cross_entropy, compile_cache=cache, dynamic_dims=1)
    ev_eager = make_eval_step(model, losses.cross_entropy, compile=False)
    before = _traced_graphs()
    for i, width in enumerate(WIDTHS):
        batch, key = _tokens(width), random.key(width)
        if i % 2:   # a slice of a wider batch, strides (16 * 6, 6, 1): the same program serves it
            x, y = _tokens(16)
            x[:, :width], y[:, :width] = batch
            batch = x[:, :width], y[:, :width]
        new, metrics = step(ts, batch, key)
        ref, ref_metrics = eager(ts, batch, key)
        assert_trees_close(new.params, ref.params)
        torch.testing.assert_close(metrics["loss"], ref_metrics["loss"])
        assert_trees_close(ev(ts.params, ts.state, batch), ev_eager(ts.params, ts.state, batch))
    assert _traced_graphs() - before == 2   # one train graph, one eval graph, for four widths
    if cached:
        assert sorted(p.suffix for p in tmp_path.iterdir()) == [".pt2", ".pt2"]


def test_a_saved_dynamic_step_loads_for_widths_it_never_saw(tmp_path):
    model, opt, ts = _model()
    make_train_step(model, losses.cross_entropy, opt, compile_cache=tmp_path, dynamic_dims=(1,))(
        ts, _tokens(7), random.key(0))
    (saved,) = tmp_path.iterdir()
    again = make_train_step(model, losses.cross_entropy, opt, compile_cache=tmp_path, dynamic_dims=(1,))
    eager = make_train_step(model, losses.cross_entropy, opt, compile=False)
    before = _traced_graphs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # loads cleanly
        for width in (11, 4):
            new, _ = again(ts, _tokens(width), random.key(1))
            assert_trees_close(new.params, eager(ts, _tokens(width), random.key(1))[0].params)
    assert _traced_graphs() == before and list(tmp_path.iterdir()) == [saved]


def test_width_one_is_its_own_signature(tmp_path):
    """Width 1 is never symbolic (torch specializes it): it gets a file of its own, and a later
    step loads each file for its widths without compiling."""
    model, opt, ts = _model()
    eager = make_train_step(model, losses.cross_entropy, opt, compile=False)
    for run in range(2):
        step = make_train_step(model, losses.cross_entropy, opt, compile_cache=tmp_path, dynamic_dims=(1,))
        before = _traced_graphs()
        for width in (6, 1, 8):
            new, _ = step(ts, _tokens(width), random.key(2))
            assert_trees_close(new.params, eager(ts, _tokens(width), random.key(2))[0].params)
        assert _traced_graphs() - before == (2 if run == 0 else 0)
    assert len(list(tmp_path.iterdir())) == 2


def _branchy(x):
    """A function whose program holds a guard on a symbolic size (``width > 8``)."""
    return x.sum() if x.shape[1] > 8 else x.mean()


def test_a_width_the_saved_program_rejects_gets_a_variant_file(tmp_path):
    """The guards of a program compiled with symbolic sizes may still reject some sizes (a
    branch on one): the program compiled for those goes to ``<name>.1.pt2``, and a later
    process picks each file by its guards."""
    dynamic = DynamicDims((0,), (1,))
    for run in range(2):
        fn = SavedCompile(with_own_code(_branchy), tmp_path, "t", training=False, dynamic=dynamic)
        before = _traced_graphs()
        for width in (4, 12, 6, 20):
            x = torch.randn(3, width)
            torch.testing.assert_close(fn(x), _branchy(x))
        assert _traced_graphs() - before == (2 if run == 0 else 0)
    first, variant = sorted((p.name for p in tmp_path.iterdir()), key=len)
    assert variant == first.replace(".pt2", ".1.pt2")


def test_the_caller_tensors_are_not_marked():
    x, y = _tokens(5)
    marked = DynamicDims((1,), (1,)).marked((None, (x, y)))
    assert marked[1][0] is not x and marked[1][0].data_ptr() == x.data_ptr()
    assert not hasattr(x, "_dynamo_dynamic_indices") and not hasattr(y, "_dynamo_dynamic_indices")


def test_with_the_hook_off_the_step_compiles_per_width_and_is_still_right(monkeypatch):
    off = gate.Gate(torch.__version__)
    off.off["mark_dynamic"] = "test"
    monkeypatch.setattr(gate, "GATE", off)
    assert not _torch.mark_dynamic(torch.zeros(2, 3), (1,))
    model, opt, ts = _model()
    step = make_train_step(model, losses.cross_entropy, opt, dynamic_dims=(1,))
    eager = make_train_step(model, losses.cross_entropy, opt, compile=False)
    for width in (5, 9):
        new, _ = step(ts, _tokens(width), random.key(3))
        assert_trees_close(new.params, eager(ts, _tokens(width), random.key(3))[0].params)


def test_a_failing_mark_turns_the_hook_off_with_one_warning(monkeypatch):
    import torch._dynamo

    monkeypatch.setattr(gate, "GATE", gate.Gate(torch.__version__))

    def moved(*args, **kwargs):
        raise TypeError("changed signature")
    monkeypatch.setattr(torch._dynamo, "mark_dynamic", moved)
    with pytest.warns(RuntimeWarning, match=r"'mark_dynamic' acceleration .*TypeError: changed signature"):
        assert not _torch.mark_dynamic(torch.zeros(2, 3), (1,))
    assert not gate.hook_on("mark_dynamic")


def test_signatures_leave_the_symbolic_sizes_out():
    x5, y5 = _tokens(5)
    x9, y9 = _tokens(9)
    assert batch_signature((x5, y5), (1,)) == batch_signature((x9, y9), (1,))
    assert batch_signature((x5, y5)) != batch_signature((x9, y9))
    assert batch_signature(_tokens(1), (1,)) != batch_signature((x5, y5), (1,))   # size 1 stays static
    assert batch_signature(_tokens(5, n=3), (1,)) != batch_signature((x5, y5), (1,))   # other dims count
    assert symbolic_dims(y5, (1, 2)) == (1,)   # a dim the tensor lacks is skipped
    log = SignatureLog((1,))
    for width in WIDTHS:
        log.see(_tokens(width))
    assert log.take_new() == 1 and len(log) == 1


def test_fit_counts_one_compile_event_for_every_width():
    model, opt, ts = _model()
    step = make_train_step(model, losses.cross_entropy, opt, compile=False, dynamic_dims=(1,))
    ev = make_eval_step(model, losses.cross_entropy, compile=False, dynamic_dims=(1,))
    x, y = _tokens(12, n=16)
    widths = iter([3, 5, 7, 9] * 10)

    def trimmed(xb, yb):   # each batch at another width, as a token batch trimmed to its longest row
        w = next(widths)
        return xb[:, :w], yb[:, :w]
    _, history = fit(step, ts, (x, y), epochs=2, batch_size=4, key=random.key(0), eval_step=ev, val_data=(x, y),
                     batch_fn=trimmed, progress=False)
    assert [r["train_new_signatures"] for r in history.rows] == [1, 0]
    assert [r["eval_new_signatures"] for r in history.rows] == [1, 0]
    assert step.dynamic_dims == (1,) and ev.dynamic_dims == (1,)


@pytest.mark.parametrize("dims, error", [
    ("1", TypeError), ((1.0,), TypeError), (True, TypeError), ((1, True), TypeError), ([[1]], TypeError),
    ((-1,), ValueError), ((1, 1), ValueError),
])
def test_bad_dynamic_dims_are_rejected(dims, error):
    model, opt, _ = _model()
    with pytest.raises(error, match=r"make_train_step: dynamic_dims must .*got"):
        make_train_step(model, losses.cross_entropy, opt, dynamic_dims=dims)
    with pytest.raises(error, match=r"make_eval_step: dynamic_dims must .*got"):
        make_eval_step(model, losses.cross_entropy, dynamic_dims=dims)


def test_good_dynamic_dims_are_normalized():
    assert check_dynamic_dims("f", None) == () and check_dynamic_dims("f", ()) == ()
    assert check_dynamic_dims("f", 1) == (1,) and check_dynamic_dims("f", [2, 0]) == (0, 2)


def test_dynamic_dims_with_sharding_is_refused():
    model, opt, _ = _model()
    with pytest.raises(ValueError, match=r"dynamic_dims is not available with sharding='full'.*got \(1,\)"):
        make_train_step(model, losses.cross_entropy, opt, sharding="full", dynamic_dims=(1,))

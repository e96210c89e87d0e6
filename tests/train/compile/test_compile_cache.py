"""make_train_step / make_eval_step with ``compile_cache``: the compiled step is saved, a new
process loads it without tracing, and anything that changed what the step computes (settings,
input shapes, a module's source, a damaged file) compiles it again."""

import importlib
import io
import os
import pickle
import stat
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

from deepfn import losses, optim, random, tree
from deepfn._private_files import private_dir
from deepfn.models import MLP
from deepfn.train import (
    TrainState,
    build_train_step,
    ensemble_train_state,
    make_ensemble_train_step,
    make_eval_step,
    make_train_step,
)
from deepfn.train.compile import SavedCompile, compiled
from deepfn.train.compile import saved as saved_compile
from deepfn.train.compile.own_code import with_own_code
from deepfn.train.compile.saved import closure_objects
from tests.utils import assert_trees_close

ROOT = Path(__file__).resolve().parents[3]
OTHER_USER = 12345   # a user id that is not ours


@pytest.fixture(autouse=True, scope="module")
def private_cache_root(tmp_path_factory):
    """deepfn's cache root (the secret key that signs saved steps) in a fresh folder; new
    processes started by these tests inherit it."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DEEPFN_CACHE_DIR", str(tmp_path_factory.mktemp("deepfn-cache")))
        yield


def _data(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def _traced_graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def _steps(lr, cache):
    model, opt = MLP(6, (16,), 3, dropout_rate=0.1), optim.adamw(lr=lr)
    saved = make_train_step(model, losses.cross_entropy, opt, clip_norm=1.0, compile_cache=cache)
    eager = make_train_step(model, losses.cross_entropy, opt, clip_norm=1.0, compile=False)
    return saved, eager, TrainState.create(model, opt, random.key(0))


# The same program in a new interpreter: the step's objects are new, only the file is shared.
_NEW_PROCESS = """
import sys, torch
from deepfn import losses, optim, random, tree
from deepfn._private_files import private_dir
from deepfn.models import MLP
from deepfn.train import TrainState, make_train_step
model, opt = MLP(6, (16,), 3, dropout_rate=0.1), optim.adamw(lr=0.1)
step = make_train_step(model, losses.cross_entropy, opt, clip_norm=1.0, compile_cache=sys.argv[1])
g = torch.Generator().manual_seed(0)
x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
new, metrics = step(TrainState.create(model, opt, random.key(0)), (x, y), random.key(1))
torch.save({"params": new.params, "loss": metrics["loss"]}, sys.argv[2])
print("traced graphs:", torch._dynamo.utils.counters["stats"]["unique_graphs"])
"""


def test_a_new_process_loads_the_saved_step_and_other_settings_compile_their_own(tmp_path):
    cache = tmp_path / "steps"
    step, eager, ts = _steps(0.1, cache)
    batch, key = _data(), random.key(1)
    new, metrics = step(ts, batch, key)
    files = sorted(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt2"
    expected, expected_metrics = eager(ts, batch, key)
    assert_trees_close(new.params, expected.params)

    out = tmp_path / "out.pt"
    done = subprocess.run([sys.executable, "-c", _NEW_PROCESS, str(cache), str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "traced graphs: 0" in done.stdout, done.stdout + done.stderr[-3000:]   # loaded, not traced
    assert "Warning" not in done.stderr, done.stderr[-3000:]
    loaded = torch.load(out)
    assert_trees_close(loaded["params"], expected.params)
    torch.testing.assert_close(loaded["loss"], expected_metrics["loss"])
    assert sorted(cache.iterdir()) == files   # nothing compiled again

    # Another learning rate is another program: a file of its own, and its own numbers.
    step2, eager2, _ = _steps(0.2, cache)
    assert_trees_close(step2(ts, batch, key)[0].params, eager2(ts, batch, key)[0].params)
    assert len(list(cache.iterdir())) == 2


def test_saves_after_other_compiles_of_the_same_step_code(tmp_path):
    """Dynamo remembers per code object which values changed between compiles and would trace
    them as symbols; a step saved for one input signature must not depend on that history."""
    # (Found when a compiled train_mlp.py run came first: "TensorifyScalarRestartAnalysis".)
    model = MLP(6, (16, 8), 3, dropout_rate=0.2, batch_norm=True)
    opt = optim.adamw(optim.cosine_decay(3e-3, 100, alpha=0.05), weight_decay=1e-4)
    plain = make_train_step(model, losses.cross_entropy, opt)
    ts = TrainState.create(model, opt, random.key(0))
    for i in range(2):
        ts, _ = plain(ts, _data(seed=i), random.key(i))
    step, eager, ts = _steps(0.4, tmp_path)
    batch = _data()
    key = random.key(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # saved, not "cannot be saved"
        new, _ = step(ts, batch, key)
    assert len(list(tmp_path.iterdir())) == 1
    assert_trees_close(new.params, eager(ts, batch, key)[0].params)


def test_each_input_shape_gets_its_own_file_and_the_right_program(tmp_path):
    step, eager, ts = _steps(0.1, tmp_path)
    key = random.key(3)
    for n in (8, 4, 8):   # the third call reuses the first program (its guards accept it)
        batch = _data(n, seed=n)
        assert_trees_close(step(ts, batch, key)[0].params, eager(ts, batch, key)[0].params)
    assert len(list(tmp_path.iterdir())) == 2


def test_a_damaged_file_is_compiled_again_with_a_warning_and_replaced(tmp_path):
    step, eager, ts = _steps(0.1, tmp_path)
    batch, key = _data(), random.key(1)
    step(ts, batch, key)
    (path,) = tmp_path.iterdir()
    path.write_bytes(b"not a compiled step")
    again, _, _ = _steps(0.1, tmp_path)
    with pytest.warns(UserWarning, match=r"not using the saved compiled step .*\.pt2.*compiling it again"):
        new, _ = again(ts, batch, key)
    assert_trees_close(new.params, eager(ts, batch, key)[0].params)
    assert path.read_bytes() != b"not a compiled step"
    before = _traced_graphs()
    third, _, _ = _steps(0.1, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # the replaced file loads cleanly
        third(ts, batch, key)
    assert _traced_graphs() == before


_LOSS_MODULE = """
import torch
SCALE = {scale}
REDUCE = torch.mean

def scaled_loss(logits, labels):
    return SCALE * REDUCE(torch.nn.functional.cross_entropy(logits, labels, reduction="none"))
"""


def test_an_edited_module_or_a_rebound_global_is_not_run_from_a_stale_file(tmp_path, monkeypatch):
    """Globals are baked into the compiled step and torch saves no guard on them: the module's
    source and the values of its names are compared with the saved ones instead."""
    module_dir = tmp_path / "mods"
    module_dir.mkdir()
    source = module_dir / "user_loss_for_cache_test.py"
    source.write_text(_LOSS_MODULE.format(scale=1.0))
    monkeypatch.syspath_prepend(str(module_dir))
    user = importlib.import_module("user_loss_for_cache_test")
    model, opt = MLP(6, (16,), 3), optim.sgd(lr=0.1)
    ts, batch = TrainState.create(model, opt, random.key(0)), _data()
    cache = tmp_path / "steps"
    first = make_train_step(model, user.scaled_loss, opt, compile_cache=cache)(ts, batch, None)[1]["loss"]

    source.write_text(_LOSS_MODULE.format(scale=2.0))
    user = importlib.reload(user)
    step = make_train_step(model, user.scaled_loss, opt, compile_cache=cache)
    with pytest.warns(UserWarning, match=r"source of user_loss_for_cache_test changed"):
        second = step(ts, batch, None)[1]["loss"]
    torch.testing.assert_close(second, 2 * first)

    monkeypatch.setattr(user, "SCALE", 3.0)   # reassigned at run time: the source is unchanged
    step = make_train_step(model, user.scaled_loss, opt, compile_cache=cache)
    with pytest.warns(UserWarning, match=r"module-level name of user_loss_for_cache_test is bound to another"):
        third = step(ts, batch, None)[1]["loss"]
    torch.testing.assert_close(third, 3 * first)

    monkeypatch.setattr(user, "REDUCE", torch.sum)   # a name bound to another function
    step = make_train_step(model, user.scaled_loss, opt, compile_cache=cache)
    with pytest.warns(UserWarning, match=r"module-level name of user_loss_for_cache_test is bound to another"):
        fourth = step(ts, batch, None)[1]["loss"]
    torch.testing.assert_close(fourth, len(batch[0]) * third)
    monkeypatch.delitem(sys.modules, "user_loss_for_cache_test")


def test_eval_step_is_saved_and_loaded(tmp_path):
    model = MLP(6, (16,), 3)
    params, state = model.init(random.key(0))
    batch = _data()
    first = make_eval_step(model, losses.cross_entropy, compile_cache=tmp_path)(params, state, batch)
    assert len(list(tmp_path.iterdir())) == 1
    before = _traced_graphs()
    again = make_eval_step(model, losses.cross_entropy, compile_cache=tmp_path)(params, state, batch)
    assert _traced_graphs() == before
    expected = make_eval_step(model, losses.cross_entropy, compile=False)(params, state, batch)
    for m in (first, again):
        torch.testing.assert_close(m["loss"], expected["loss"])
        torch.testing.assert_close(m["accuracy"], expected["accuracy"])


def test_a_loaded_donating_step_writes_into_the_given_state(tmp_path):
    model, opt = MLP(6, (16,), 3), optim.adamw(lr=0.1)
    ts, batch = TrainState.create(model, opt, random.key(0)), _data()
    expected, _ = make_train_step(model, losses.cross_entropy, opt, compile=False)(ts, batch, None)
    for _ in range(2):   # compiled and saved, then loaded by a new step
        step = make_train_step(model, losses.cross_entropy, opt, donate=True, compile_cache=tmp_path)
        given = tree.map(torch.clone, ts)
        new, _ = step(given, batch, None)
        assert_trees_close(new.params, expected.params)
        assert all(a is b for a, b in zip(tree.leaves(new.params), tree.leaves(given.params), strict=True))
    assert len(list(tmp_path.iterdir())) == 1


def test_split_step_saves_its_compiled_forward_and_backward(tmp_path):
    model, opt = MLP(6, (16,), 3, dropout_rate=0.1), optim.adamw(lr=0.1)
    ts, batch, key = TrainState.create(model, opt, random.key(0)), _data(), random.key(2)
    expected, _ = make_train_step(model, losses.cross_entropy, opt, compile=False)(ts, batch, key)
    first, _ = make_train_step(model, losses.cross_entropy, opt, compile="split", compile_cache=tmp_path)(
        ts, batch, key)
    assert len(list(tmp_path.iterdir())) == 1
    before = _traced_graphs()
    step = make_train_step(model, losses.cross_entropy, opt, compile="split", donate=True, compile_cache=tmp_path)
    again, _ = step(tree.map(torch.clone, ts), batch, key)
    assert _traced_graphs() == before
    assert_trees_close(first.params, expected.params)
    assert_trees_close(again.params, expected.params)


def test_ensemble_step_is_saved_and_loaded(tmp_path):
    model, opt = MLP(6, (16,), 3, dropout_rate=0.1), optim.sgd(lr=0.1)
    ts, batch = ensemble_train_state(model, opt, random.key(0), 3), _data()
    keys = random.split(random.key(1), 3)
    expected, _ = make_ensemble_train_step(model, losses.cross_entropy, opt, compile=False)(ts, batch, keys)
    first, _ = make_ensemble_train_step(model, losses.cross_entropy, opt, compile_cache=tmp_path)(ts, batch, keys)
    before = _traced_graphs()
    again, _ = make_ensemble_train_step(model, losses.cross_entropy, opt, compile_cache=tmp_path)(ts, batch, keys)
    assert _traced_graphs() == before
    assert_trees_close(first.params, expected.params)
    assert_trees_close(again.params, expected.params)


def test_a_step_torch_cannot_save_runs_compiled_once_with_a_warning(tmp_path):
    class LocalLoss:   # a class defined in a function: torch's serializer refuses to save it
        def __call__(self, logits, labels):
            return losses.cross_entropy(logits, labels)

    model, opt = MLP(6, (16,), 3), optim.adamw(lr=0.1)
    ts, batch = TrainState.create(model, opt, random.key(0)), _data()
    expected, _ = make_train_step(model, LocalLoss(), opt, compile=False)(ts, batch, None)
    step = make_train_step(model, LocalLoss(), opt, donate=True, compile_cache=tmp_path)
    with pytest.warns(UserWarning, match=r"cannot be saved to compile_cache .*runs compiled but unsaved"):
        new, _ = step(tree.map(torch.clone, ts), batch, None)
    assert_trees_close(new.params, expected.params)   # one update: the step ran once
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step(new, batch, None)
    assert not list(tmp_path.iterdir())


def test_a_saved_step_that_fails_to_run_is_removed_and_compiled_again(tmp_path, monkeypatch):
    step, eager, ts = _steps(0.1, tmp_path)
    batch, key = _data(), random.key(1)
    step(ts, batch, key)   # compiled and saved

    class Broken:   # passes every check, then fails: a damaged kernel, say
        def guard_check(self, *args):
            return True

        def disable_guard_check(self):
            pass

        def source_info(self):
            return types.SimpleNamespace(inlined_sources=set())

        def __call__(self, *args):
            raise RuntimeError("kernel missing")

    monkeypatch.setattr(torch.compiler, "load_compiled_function", lambda *a, **k: Broken())
    monkeypatch.setattr(saved_compile, "_read", lambda path: ({"module_values": {}}, b""))
    again, _, _ = _steps(0.1, tmp_path)
    with pytest.warns(UserWarning, match=r"failed on its first call \(RuntimeError: kernel missing\); removed"):
        new, _ = again(ts, batch, key)
    assert_trees_close(new.params, eager(ts, batch, key)[0].params)
    assert len(list(tmp_path.iterdir())) == 1   # compiled and written anew


class _Unreadable:   # an object in the step's closure that the file name cannot be made from
    def __repr__(self):
        raise RuntimeError("no repr")

    def __call__(self, logits, labels):
        return losses.cross_entropy(logits, labels)


def test_a_step_whose_closure_cannot_be_fingerprinted_runs_compiled_unsaved(tmp_path):
    model, opt = MLP(6, (16,), 3), optim.sgd(lr=0.1)
    ts, batch = TrainState.create(model, opt, random.key(0)), _data()
    step = make_train_step(model, _Unreadable(), opt, compile_cache=tmp_path)
    with pytest.warns(UserWarning, match=r"cannot be saved to compile_cache \(RuntimeError: no repr\)"):
        new, _ = step(ts, batch, None)
    expected, _ = make_train_step(model, _Unreadable(), opt, compile=False)(ts, batch, None)
    assert_trees_close(new.params, expected.params)
    assert not list(tmp_path.iterdir())


def test_a_bad_batch_still_raises_the_models_error(tmp_path):
    model, opt = MLP(6, (16,), 3), optim.sgd(lr=0.1)
    step = make_train_step(model, losses.cross_entropy, opt, compile_cache=tmp_path)
    ts = TrainState.create(model, opt, random.key(0))
    with pytest.raises(ValueError, match=r"6"):
        step(ts, (torch.randn(8, 5), torch.zeros(8, dtype=torch.int64)), None)


def test_the_file_name_follows_settings_inputs_and_global_modes(tmp_path):
    model, opt = MLP(6, (16,), 3), optim.sgd(lr=0.1)
    ts = TrainState.create(model, opt, random.key(0))

    def path(batch=None, **settings):
        pure = build_train_step(model, losses.cross_entropy, opt, **settings)
        return SavedCompile(pure, tmp_path, "test").path_for((ts, batch or _data(), None))
    base = path()
    assert path() == base   # a new step with the same settings and inputs
    assert path(clip_norm=1.0) != base
    assert path(batch=_data(4)) != base
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert path() != base
    with torch.no_grad():
        assert path() != base
    with pytest.MonkeyPatch.context() as env:   # another CPU instruction set: other C++ kernels
        env.setenv("ATEN_CPU_CAPABILITY", "avx2" if "AVX2" not in torch.backends.cpu.get_cpu_capability() else "default")
        assert path() != base
    assert not list(tmp_path.iterdir())   # naming a file writes nothing


def test_closure_objects_are_found_through_nested_and_recursive_functions():
    model, settings = object(), {"lr": 0.1}

    def outer():
        def walk(n):   # closes over itself
            return (model, settings) if n == 0 else walk(n - 1)

        def step(x):
            return walk(x), 3
        return step
    assert closure_objects(outer()) == {"fn.walk.model": model, "fn.walk.settings": settings}


def test_rejects_compile_cache_on_an_eager_train_step(tmp_path):
    with pytest.raises(ValueError, match=r"compile_cache saves compiled steps: it needs compile=True, 'whole' or "
                                         r"'split'; got compile=False"):
        make_train_step(MLP(6, (8,), 3), losses.cross_entropy, optim.sgd(lr=0.1), compile=False,
                        compile_cache=tmp_path)


def test_rejects_compile_cache_on_an_eager_eval_step(tmp_path):
    with pytest.raises(ValueError, match=r"make_eval_step: compile_cache .* needs compile=True"):
        make_eval_step(MLP(6, (8,), 3), losses.cross_entropy, compile=False, compile_cache=tmp_path)


def test_rejects_compile_cache_on_an_eager_ensemble_step(tmp_path):
    with pytest.raises(ValueError, match=r"make_ensemble_train_step: compile_cache .* needs compile=True"):
        make_ensemble_train_step(MLP(6, (8,), 3), losses.cross_entropy, optim.sgd(lr=0.1), compile=False,
                                 compile_cache=tmp_path)


def test_rejects_a_compile_cache_that_is_not_a_path():
    with pytest.raises(TypeError, match=r"compile_cache must be a directory path .*got int"):
        make_train_step(MLP(6, (8,), 3), losses.cross_entropy, optim.sgd(lr=0.1), compile_cache=3)



def test_large_cpu_steps_compile_without_inductors_layout_optimization(monkeypatch):
    # Channels-last copies of every convolution's tensors cost a whole CPU step ~18% (README).
    from deepfn.train.compile.first_call import SMALL_STEP_ELEMENTS, inductor_options
    seen, real = [], torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(kw) or real(fn, **kw))
    double = compiled(lambda x: x * 2, None, "test")
    assert seen == []                                      # made on the first call, for its inputs
    big = torch.ones(SMALL_STEP_ELEMENTS + 1)
    assert torch.equal(double(big), torch.full_like(big, 2.0)) and double(big) is not None
    assert seen == [{"fullgraph": True, "options": {"layout_optimization": False}}]
    assert inductor_options(({"w": big}, [torch.ones(2)], 3)) == {"layout_optimization": False}
    assert inductor_options((big, torch.ones(1, device="meta"))) == {}   # not all on the CPU
    assert inductor_options((1, "no tensors")) == {}


def test_small_cpu_steps_compile_with_inductors_cpp_wrapper(monkeypatch):
    # A sub-millisecond step spends ~15-20% of its time in the Python wrapper (README).
    from deepfn.train.compile.first_call import (
        SMALL_STEP_ELEMENTS,
        SMALL_STEP_TENSORS,
        inductor_options,
    )
    small = {"layout_optimization": False, "cpp_wrapper": True}
    at_limit = [torch.ones(SMALL_STEP_ELEMENTS - 2), torch.ones(2)]
    assert inductor_options((at_limit,)) == small
    assert inductor_options((at_limit, torch.ones(1))) == {"layout_optimization": False}     # one number more
    assert inductor_options(([torch.ones(1)] * SMALL_STEP_TENSORS,)) == small
    assert inductor_options(([torch.ones(1)] * (SMALL_STEP_TENSORS + 1),)) == {"layout_optimization": False}
    assert inductor_options((torch.ones(1), torch.ones(1, device="meta"))) == {}   # not all on the CPU
    assert inductor_options((torch.ones(1),), training=False) == {"cpp_wrapper": True}
    seen, real = [], torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(kw) or real(fn, **kw))
    model, opt = MLP(6, (8,), 3, dropout_rate=0.5), optim.adam(1e-2)
    ts = TrainState.create(model, opt, random.key(0))
    eager = make_train_step(model, losses.cross_entropy, opt, compile=False)
    compiled_step = make_train_step(model, losses.cross_entropy, opt, compile=True)
    assert [kw["options"]["cpp_wrapper"] for kw in seen] == []
    new, _ = compiled_step(ts, _data(), random.key(1))
    assert [kw["options"].get("cpp_wrapper") for kw in seen] == [True]
    # The same kernels, called from C++: the eager step's numbers (dropout included).
    expected, _ = eager(ts, _data(), random.key(1))
    assert_trees_close((new.params, new.opt_state), (expected.params, expected.opt_state), rtol=1e-5, atol=1e-6)


def test_eval_steps_keep_inductors_layout_optimization(monkeypatch, tmp_path):
    # Forward-only graphs gain from channels-last convolutions on the CPU (README: 1.4-1.8x).
    from deepfn.train.compile.first_call import SMALL_STEP_ELEMENTS, inductor_options
    seen, real = [], torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(kw) or real(fn, **kw))
    model = MLP(6, (8,), 3)
    params, state = model.init(random.key(0))
    eval_step = make_eval_step(model, losses.cross_entropy)
    eval_step(params, state, _data())
    assert seen == [{"fullgraph": True, "options": {"cpp_wrapper": True}}]
    assert inductor_options((torch.ones(SMALL_STEP_ELEMENTS + 1),), training=False) == {}
    # A saved program is named by its settings too: a training and an eval compile of one
    # function never share a file.
    fn = with_own_code(lambda x: x * 2)
    args = (torch.ones(2),)
    names = {SavedCompile(fn, tmp_path, "t", training=t).path_for(args).name for t in (True, False)}
    assert len(names) == 2


def _scaled_by(n: int):
    def scale(x, *, bias=0.0):
        """Docs."""
        return x * n + bias
    return scale


@pytest.mark.parametrize("compile_cache", [None, "dir"])
def test_functions_from_one_factory_compile_past_the_recompile_limit(tmp_path, compile_cache):
    # Every make_train_step closure shares one code object, and Dynamo's entries are per code
    # object: with a limit of one, the second closure's compile failed under fullgraph=True.
    cache = None if compile_cache is None else tmp_path
    x = torch.ones(3)
    with torch._dynamo.config.patch(recompile_limit=1):
        runs = [compiled(_scaled_by(n), cache, "test") for n in (2, 3, 4)]
        assert [float(run(x)[0]) for run in runs] == [2.0, 3.0, 4.0]


def test_own_code_copy_keeps_what_the_function_carries():
    fn = _scaled_by(5)
    fn.tag = "kept"
    copy = with_own_code(fn)
    assert copy.__code__ is not fn.__code__ and copy.__code__.co_code == fn.__code__.co_code
    assert (copy.__name__, copy.__qualname__, copy.__doc__, copy.tag) == (fn.__name__, fn.__qualname__, "Docs.", "kept")
    assert float(copy(torch.ones(1), bias=1.0)[0]) == 6.0 and copy.__kwdefaults__ == {"bias": 0.0}
    assert with_own_code(torch.sin) is torch.sin        # not a Python function: itself


# Planted saved steps: a file whose payload unpickles into code that leaves a marker folder.
class _Planted:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def _eval_setup():
    model = MLP(6, (8,), 3)
    params, state = model.init(random.key(0))
    batch = _data()
    expected = make_eval_step(model, losses.cross_entropy, compile=False)(params, state, batch)
    return model, params, state, batch, expected


@pytest.fixture(scope="module")
def saved_eval_step(tmp_path_factory, private_cache_root) -> tuple[str, bytes, dict]:
    """The name, bytes and header of a saved eval step, written by a first compile into a new
    folder."""
    folder = tmp_path_factory.mktemp("steps") / "new"
    model, params, state, batch, _ = _eval_setup()
    make_eval_step(model, losses.cross_entropy, compile_cache=folder)(params, state, batch)
    (path,) = folder.iterdir()
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    return path.name, path.read_bytes(), saved_compile._read(path)[0]


def _run_eval_step(folder: Path):
    model, params, state, batch, expected = _eval_setup()
    metrics = make_eval_step(model, losses.cross_entropy, compile_cache=folder)(params, state, batch)
    torch.testing.assert_close(metrics["loss"], expected["loss"])
    torch.testing.assert_close(metrics["accuracy"], expected["accuracy"])


def test_the_planted_payload_runs_code_when_unpickled(tmp_path):
    # What these tests plant really runs when torch loads it: they could fail.
    marker = tmp_path / "marker"
    with pytest.raises(Exception):   # noqa: B017 (torch's loader fails after the code ran)
        torch.compiler.load_compiled_function(io.BytesIO(pickle.dumps(_Planted(marker))))
    assert marker.is_dir()


@pytest.mark.parametrize("planted", ["payload replaced", "wrong HMAC", "group-writable", "a symbolic link",
                                     "another user's"])
def test_a_planted_saved_step_is_not_unpickled_and_is_compiled_again(planted, saved_eval_step, tmp_path):
    name, saved, header = saved_eval_step
    folder, marker = tmp_path / "steps", tmp_path / "marker"
    assert private_dir(folder) is None
    path = folder / name
    path.write_bytes(saved)
    evil = pickle.dumps(_Planted(marker))
    if planted == "payload replaced":   # the saved file's format, HMAC and header, another payload
        end = saved.index(b"\n", len(saved_compile._MAGIC) + saved_compile._MAC_HEX + 1)
        path.write_bytes(saved[:end + 1] + evil)
        reason = "HMAC does not match"
    elif planted == "wrong HMAC":      # a valid-looking file signed with another key
        mac_at = len(saved_compile._MAGIC)
        path.write_bytes(saved[:mac_at] + (b"0" if saved[mac_at:mac_at + 1] != b"0" else b"1") + saved[mac_at + 1:])
        reason = "HMAC does not match"
    else:   # signed with the user's key (as only deepfn could): the owner, mode and link checks stop it
        planted_path = path if planted != "a symbolic link" else tmp_path / "elsewhere" / name
        assert private_dir(planted_path.parent) is None
        saved_compile._write(planted_path, header, evil)
        if planted == "group-writable":
            path.chmod(0o660)
            reason = r"is writable by group or others \(mode 0o660\)"
        elif planted == "a symbolic link":
            path.unlink()
            path.symlink_to(planted_path)
            reason = "is a symbolic link"
        else:
            _give_to_another_user(path, "file")
            reason = f"is owned by user id {OTHER_USER}"
    with pytest.warns(UserWarning, match=rf"not using the saved compiled step {path} \(UntrustedFileError: "
                                         rf".*{reason}.*compiling it again"):
        _run_eval_step(folder)
    assert not marker.exists()
    replaced = os.lstat(path)   # by the step compiled again
    assert stat.S_ISREG(replaced.st_mode) and replaced.st_uid == os.getuid() and stat.S_IMODE(replaced.st_mode) == 0o600
    assert saved_compile._read(path)[0] == header


def _give_to_another_user(path, what):
    """``path`` owned by ``OTHER_USER`` (skips the test where only root may chown)."""
    try:
        os.chown(path, OTHER_USER, OTHER_USER)
    except PermissionError:
        pytest.skip(f"simulating another user's {what} needs root (os.chown)")


@pytest.mark.parametrize("folder_kind", ["group-writable", "another user's"])
def test_a_folder_others_can_write_is_not_used(folder_kind, saved_eval_step, tmp_path):
    name, _, header = saved_eval_step
    folder, marker = tmp_path / "shared", tmp_path / "marker"
    assert private_dir(folder) is None
    saved_compile._write(folder / name, header, pickle.dumps(_Planted(marker)))   # signed: only the folder stops it
    planted = (folder / name).read_bytes()
    if folder_kind == "group-writable":
        folder.chmod(0o770)
        reason = r"writable by group or others \(mode 0o770\)"
    else:
        _give_to_another_user(folder, "folder")
        reason = f"owned by user id {OTHER_USER}"
    with pytest.warns(UserWarning, match=rf"cannot be saved to compile_cache \(the folder {folder} is {reason}.*; a "
                                         r"folder of saved steps holds code.*runs compiled but unsaved"):
        _run_eval_step(folder)
    assert not marker.exists()
    assert (folder / name).read_bytes() == planted and len(list(folder.iterdir())) == 1   # left as it was
    if folder_kind == "group-writable":
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o770


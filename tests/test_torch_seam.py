"""deepfn._torch: the one seam to torch's internals. Each hook works on the pinned torch; with the
version gate forced off (or its private call raising) the public path gives the same numbers,
with one warning; and no other module names a private torch attribute."""

from __future__ import annotations

import ast
import io
import pickle
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import pytest
import torch
import torch._inductor.config
from torch.fx.experimental.proxy_tensor import make_fx

from deepfn import _torch as seam
from deepfn import optim, tree
from deepfn._torch import gate, trees
from deepfn._torch import kernels as foreach_module
from deepfn.random import threefry as _threefry
from deepfn.train.compile import guard_filter as _guard_filter
from deepfn.train.compile import guard_pickling as _guard_pickling
from deepfn.tree import flat as _flat

ROOT = Path(__file__).resolve().parents[1]



# -- the rule: no private torch name outside the seam ---------------------------------------

def _private(dotted: str) -> bool:
    parts = dotted.split(".")
    return parts[0] == "torch" and any(p.startswith("_") and not (p.startswith("__") and p.endswith("__"))
                                       for p in parts[1:])


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def private_names(source: str) -> list[tuple[int, str]]:
    """``(line, name)`` of every private torch name in ``source``: attribute chains rooted at
    ``torch``, imports, and ``getattr(torch..., "_...")`` with a literal or f-string name."""
    found = []
    nodes = list(ast.walk(ast.parse(source)))
    inner = {id(n.value) for n in nodes if isinstance(n, ast.Attribute)}   # report whole chains only
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if _private(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names
                      if _private(f"{node.module}.{a.name}")]
        elif isinstance(node, ast.Attribute) and id(node) not in inner:
            name = _dotted(node)
            if name is not None and _private(name):
                found.append((node.lineno, name))
        elif isinstance(node, ast.Call) and _dotted(node.func) == "getattr" and len(node.args) >= 2:
            target, attr = _dotted(node.args[0]), node.args[1]
            text = attr.value if isinstance(attr, ast.Constant) else (
                attr.values[0].value if isinstance(attr, ast.JoinedStr) and attr.values
                and isinstance(attr.values[0], ast.Constant) else None)
            if target is not None and isinstance(text, str) and _private(f"{target}.{text}"):
                found.append((node.lineno, f"getattr({target}, {text!r})"))
    return sorted(found)


def test_the_rule_finds_each_kind_of_private_name():
    source = ("import torch._dynamo\nfrom torch._inductor import ir\nfrom torch.utils._pytree import tree_map\n"
              "x = torch._C._functorch.is_functorch_wrapped_tensor\ny = getattr(torch, f'_foreach_{n}')\n"
              "z = torch.__version__\nw = torch.compiler.is_compiling\nfrom . import _flat\n")
    assert [line for line, _ in private_names(source)] == [1, 2, 3, 4, 5]


def test_no_module_outside_the_seam_names_a_private_torch_attribute():
    offenders = []
    for path in sorted([*ROOT.joinpath("deepfn").rglob("*.py"), *ROOT.joinpath("scripts").rglob("*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("deepfn/_torch/"):
            continue
        offenders += [f"{rel}:{line}: {name}" for line, name in private_names(path.read_text())]
    assert not offenders, "private torch names outside deepfn/_torch:\n" + "\n".join(sorted(set(offenders)))


# -- the gate ---------------------------------------------------------------------------------

@pytest.fixture
def untested(monkeypatch):
    """The gate of a torch release deepfn was not tested with: every hook off."""
    monkeypatch.setattr(gate, "GATE", gate.Gate("2.99.0"))
    monkeypatch.setattr(foreach_module, "_CHECKED", {})


@pytest.fixture
def fresh(monkeypatch):
    """A fresh gate of the pinned release (hooks turned off by a test stay in it)."""
    monkeypatch.setattr(gate, "GATE", gate.Gate(torch.__version__))
    monkeypatch.setattr(foreach_module, "_CHECKED", {})


def test_the_pinned_torch_is_the_tested_release():
    assert gate.release(torch.__version__) == seam.TESTED
    assert gate.release("2.14.1+cu130") == "2.14" and gate.release("2.15.0a0") == "2.15"
    assert all(seam.hook_on(h) for h in seam.HOOKS)


def test_another_release_turns_every_hook_off_with_one_warning(untested):
    with pytest.warns(RuntimeWarning, match="not the tested release") as record:
        assert not any(seam.hook_on(h) for h in seam.HOOKS)
        seam.plain_eager([torch.ones(2)])
        seam.foreach_usable([torch.ones(2)])
    assert len(record) == 1


def test_a_failing_hook_warns_once_and_stays_off(fresh):
    with pytest.warns(RuntimeWarning, match="'foreach'") as record:
        seam.turn_off("foreach", TypeError("changed signature"))
        seam.turn_off("foreach", TypeError("again"))
    assert len(record) == 1 and not seam.hook_on("foreach") and seam.hook_on("functorch_probe")
    with pytest.raises(ValueError, match="unknown hook"):
        seam.turn_off("no_such_hook", "why")


# -- functorch probes -------------------------------------------------------------------------

def test_plain_eager_on_the_pinned_torch():
    x = torch.ones(3)
    assert seam.plain_eager([x]) and not seam.plain_eager([])
    assert torch.func.vmap(lambda t: torch.tensor(seam.plain_eager([t])))(torch.ones(2, 3)).tolist() == [False] * 2
    seen = []
    make_fx(lambda t: seen.append(seam.plain_eager([t])) or t + 1)(x)
    assert seen == [False]
    assert not seam.transforms_active()
    assert torch.func.vmap(lambda t: t * float(seam.transforms_active()))(torch.ones(2)).tolist() == [1.0, 1.0]


def test_plain_eager_is_false_while_compiling():
    seen = []

    def probe(x):
        seen.append(seam.plain_eager([x]))
        return x * 2

    torch.compile(probe, backend="eager", fullgraph=True)(torch.ones(2))
    assert seen == [False]


def test_plain_eager_is_false_with_the_gate_off(untested):
    with pytest.warns(RuntimeWarning):
        assert not seam.plain_eager([torch.ones(3)])
        assert seam.transforms_active()   # unknown: the general (math) path


def test_plain_eager_turns_itself_off_when_the_probe_raises(fresh, monkeypatch):
    def moved(*_):
        raise AttributeError("moved")
    monkeypatch.setattr(torch._C._functorch, "is_functorch_wrapped_tensor", moved)
    with pytest.warns(RuntimeWarning, match="functorch_probe"):
        assert not seam.plain_eager([torch.ones(3)])
    assert not seam.hook_on("functorch_probe")


def _cipher_words():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 2**32, (64,), generator=g, dtype=torch.int64) for _ in range(4)]


def test_threefry_direct_call_and_the_operator_agree_with_the_gate_off(untested):
    words = _cipher_words()
    want = _on_pinned(lambda: _threefry.call(*words))
    with pytest.warns(RuntimeWarning):
        assert not _threefry.directly_callable(*words)
    got = _threefry.call(*words)   # through the operator now
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


# -- foreach kernels --------------------------------------------------------------------------

def _grads():
    g = torch.Generator().manual_seed(1)
    return {"a": torch.randn(5, 3, generator=g), "b": {"c": torch.randn(7, generator=g)}}


def _adamw_updates():
    params, grads = _grads(), tree.map(lambda x: x * 0.1, _grads())
    opt = optim.adamw(lr=1e-2, weight_decay=0.1)
    state = opt.init(params)
    out = []
    for _ in range(3):
        updates, state = opt.update(grads, state, params)
        params = optim.apply_updates(params, updates)
        out.append(params)
    return out


def test_foreach_usable_on_the_pinned_torch(fresh):
    assert seam.foreach_usable([torch.ones(2)])
    assert not seam.foreach_usable([])


def test_foreach_ops_give_the_same_numbers_with_the_gate_off(untested):
    grads = _grads()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want_norm = _on_pinned(lambda: tree.global_norm(grads))
        want = _on_pinned(_adamw_updates)
    with pytest.warns(RuntimeWarning):
        got_norm = tree.global_norm(grads)
    assert torch.equal(got_norm, want_norm)
    for got, exp in zip(_adamw_updates(), want, strict=True):
        torch.testing.assert_close(got, exp)


def _on_pinned(fn):
    """``fn()`` under the pinned release's gate, whatever the test's gate is."""
    saved, saved_checked = gate.GATE, dict(foreach_module._CHECKED)
    gate.GATE = gate.Gate(torch.__version__)
    foreach_module._CHECKED.clear()
    try:
        return fn()
    finally:
        gate.GATE = saved
        foreach_module._CHECKED.clear()
        foreach_module._CHECKED.update(saved_checked)


def test_a_foreach_op_with_a_changed_signature_turns_the_kernels_off(fresh, monkeypatch):
    want = _adamw_updates()
    real = foreach_module.foreach

    def changed(name, *args, **kwargs):
        if name == "lerp":
            raise TypeError("_foreach_lerp() got an unexpected keyword argument")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(foreach_module, "foreach", changed)
    monkeypatch.setattr(foreach_module, "_CHECKED", {})   # checked again, with the changed op
    with pytest.warns(RuntimeWarning, match="'foreach'") as record:
        assert not seam.foreach_usable([torch.ones(2)])
        got = _adamw_updates()
    assert len(record) == 1
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bad", [False, True])
def test_amp_unscale_kernel_and_public_path_agree(dtype, bad, monkeypatch):
    def run():
        g = torch.Generator().manual_seed(2)
        grads = [torch.randn(6, generator=g).to(dtype), torch.randn(3, 2, generator=g).to(dtype)]
        if bad:
            grads[1][0, 1] = float("inf")
        found = torch.zeros(1)
        seam.unscale_and_check_(grads, found, torch.tensor([1 / 1024]))
        return grads, found

    monkeypatch.setattr(gate, "GATE", gate.Gate(torch.__version__))
    want = run()
    monkeypatch.setattr(gate, "GATE", gate.Gate("2.99.0"))
    with pytest.warns(RuntimeWarning):
        got = run()
    assert float(got[1]) == float(want[1]) == float(bad)
    for a, b in zip(got[0], want[0], strict=True):
        assert torch.equal(a, b)


def test_amp_unscale_falls_back_when_the_kernel_raises(fresh, monkeypatch):
    def changed(*_):
        raise TypeError("new signature")
    monkeypatch.setattr(foreach_module, "_amp_kernel", changed)
    grads, found = [torch.tensor([2.0, float("nan")])], torch.zeros(1)
    with pytest.warns(RuntimeWarning, match="amp_unscale"):
        seam.unscale_and_check_(grads, found, torch.tensor([0.5]))
    assert grads[0][0] == 1.0 and float(found) == 1.0


# -- pytree nodes -----------------------------------------------------------------------------

class Pair(NamedTuple):
    left: torch.Tensor
    right: list


def _mixed_tree():
    return {"p": Pair(torch.ones(2), [torch.zeros(1), (torch.full((3,), 2.0), None, 1.5)]),
            "q": {"r": torch.arange(3.0)}, "s": [True, 3]}


def test_pytree_nodes_hook_and_public_fallback_flatten_alike(untested):
    t = _mixed_tree()
    want_leaves, want_spec = _on_pinned(lambda: _flat.flatten(t))
    with pytest.warns(RuntimeWarning):
        leaves, spec = _flat.flatten(t)
    assert len(leaves) == len(want_leaves)
    assert all((a is b) for a, b in zip(leaves, want_leaves, strict=True))
    rebuilt = _flat.unflatten(spec, leaves)
    assert seam.pytree.tree_structure(rebuilt) == seam.pytree.tree_structure(t)
    assert _on_pinned(lambda: _flat.unflatten(want_spec, want_leaves))["p"].right[1][2] == 1.5


def test_pytree_nodes_hook_falls_back_when_the_registry_moved(fresh, monkeypatch):
    t = _mixed_tree()
    want = _flat.flatten(t)[0]

    def moved():
        raise AttributeError("module has no attribute '_get_node_type'")
    monkeypatch.setattr(trees, "_registry", moved)
    with pytest.warns(RuntimeWarning, match="pytree_nodes"):
        leaves, spec = _flat.flatten(t)
    assert all(a is b for a, b in zip(leaves, want, strict=True))
    assert tree.all_equal(_flat.unflatten(spec, leaves), t)


# -- Inductor lowering ------------------------------------------------------------------------

def _mix(ops, a, b):
    """A two-output elementwise function in ``ops`` form: (a + b) & 0xFF, a ^ b."""
    return ops.bitwise_and(ops.add(a, b), ops.constant(0xFF, torch.int64)), ops.bitwise_xor(a, b)


def _define_op(name: str):
    @torch.library.custom_op(f"deepfn_seam_test::{name}", mutates_args=())
    def op(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _mix(_TorchOps, a, b)

    @op.register_fake
    def _(a, b):
        shape = torch.broadcast_shapes(a.shape, b.shape)
        return a.new_empty(shape), a.new_empty(shape)

    return op._opoverload


class _TorchOps:
    """Inductor's ``ops`` names over eager tensors."""
    add, bitwise_and, bitwise_or, bitwise_xor = torch.add, torch.bitwise_and, torch.bitwise_or, torch.bitwise_xor
    bitwise_left_shift, bitwise_right_shift = torch.bitwise_left_shift, torch.bitwise_right_shift

    @staticmethod
    def constant(value, dtype):
        return torch.tensor(value, dtype=dtype)


def test_threefry_lowering_chain_equals_the_tensor_cipher():
    words = _cipher_words()
    got = _threefry._chain(_TorchOps, *words)
    want = _threefry._eager(*words)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def _compiled_mix(op):
    torch.compiler.reset()
    a = torch.arange(40, dtype=torch.int64).reshape(8, 5)
    b = torch.arange(5, dtype=torch.int64) * 7
    # No on-disk graph cache: a graph compiled by an earlier run would skip the lowering.
    with torch._inductor.config.patch(fx_graph_cache=False):
        got = torch.compile(lambda x, y: tuple(t + 1 for t in op(x, y)), fullgraph=True)(a, b)
    want = tuple(t + 1 for t in _mix(_TorchOps, a, b))
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


@pytest.mark.parametrize("mode", ["pointwise", "extern", "raising", "gate_off"])
def test_pointwise_lowering_compiles_to_the_same_values(mode, monkeypatch):
    op = _define_op(f"mix_{mode}")
    monkeypatch.setattr(gate, "GATE", gate.Gate("2.99.0" if mode == "gate_off" else torch.__version__))

    def pointwise(ops, a, b):
        if mode == "raising":
            raise TypeError("Pointwise.create() got an unexpected keyword argument")
        return _mix(ops, a, b)

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        registered = seam.register_pointwise_lowering(op, 2, pointwise, lambda device, size: mode == "extern",
                                                      torch.int64)
        _compiled_mix(op)
    ours = [w for w in record if issubclass(w.category, RuntimeWarning) and "deepfn" in str(w.message)]
    assert registered == (mode != "gate_off")
    assert len(ours) == (0 if mode in ("pointwise", "extern") else 1)


# -- guard filter -----------------------------------------------------------------------------

def _entry(name, is_global=True):
    return SimpleNamespace(name=name, is_global=is_global, guard_type="ID_MATCH")


def _deepfn_fn():
    pass


_deepfn_fn.__module__ = "deepfn.train.step"


@pytest.mark.parametrize("name", [
    "G['__import_torch']['x'](1)",                               # a call: not a known form
    "type(G['__import_torch_dot_nn'])",                          # another wrapper
    "G[\"__import_torch\"].add",                                 # other quoting
    "G['__import_torch'].add.__code__ if True else None",        # trailing text
    "___check_obj_id(G['__import_torch'].add, 1)",               # a guard expression
    "G['__import_torch_dot_not_a_loaded_module'].f",             # a module that is not loaded
    "G['__import_torch_dot_nn']['a']].b",                        # unbalanced
    "G['__import_deepfn_dot_optim'].backends.x",                 # a backends switch
    "Globals()['__import_torch'].add",                           # a new spelling of the globals
    "G['__dunder__'].x",                                         # a name Dynamo might reserve
    "",
])
def test_unexpected_guard_name_formats_are_kept(name):
    assert _guard_filter.library_globals_unguarded(_deepfn_fn)([_entry(name)]) == [True]


def test_a_module_name_with_another_loaded_reading_is_kept(monkeypatch):
    import sys
    import types
    monkeypatch.setitem(sys.modules, "torch_dot_evil", types.ModuleType("torch_dot_evil"))
    monkeypatch.setitem(sys.modules, "torch.evil", types.ModuleType("torch.evil"))
    keep = _guard_filter.library_globals_unguarded(_deepfn_fn)
    assert keep([_entry("G['__import_torch_dot_evil'].f"), _entry("G['__import_torch_dot_nn'].f")]) == [True, False]


def test_the_guard_filter_keeps_everything_with_the_gate_off_or_odd_entries(untested):
    with pytest.warns(RuntimeWarning):
        keep = _guard_filter.library_globals_unguarded(_deepfn_fn)
    assert keep([_entry("G['__import_torch'].add"), _entry("G['optim']")]) == [True, True]


def test_guard_entries_of_another_shape_are_all_kept(fresh):
    keep = _guard_filter.library_globals_unguarded(_deepfn_fn)
    with pytest.warns(RuntimeWarning, match="guard_filter"):
        assert keep([_entry("G['__import_torch'].add"), SimpleNamespace(label="x")]) == [True, True]
    assert keep([_entry("G['__import_torch'].add")]) == [True]   # off from now on


# -- guard pickler, compiler settings, bench counters ---------------------------------------

def _nested(scale):
    def f(x, *, factor=scale):
        return x * factor
    f.tag = "kept"
    return f


def test_the_guard_pickler_keeps_nested_functions_whole():
    cls = _guard_pickling.WholeFunctionPickler
    buffer = io.BytesIO()
    cls({}, {}, {}, buffer).dump(_nested(3.0))
    f = pickle.loads(buffer.getvalue())
    assert f(2.0) == 6.0 and f.tag == "kept" and f.__kwdefaults__ == {"factor": 3.0}
    with _guard_pickling.keep_functions_whole() as patched:
        assert patched


def test_the_guard_pickler_is_not_patched_with_the_gate_off(untested):
    with pytest.warns(RuntimeWarning), _guard_pickling.keep_functions_whole() as patched:
        assert not patched
    assert seam.guard_pickler_class(_guard_pickling.reduce_nested_function, __name__, "P") is None


def test_compiler_settings_and_bench_counters(monkeypatch):
    settings = seam.compiler_settings()
    assert isinstance(settings, tuple) and isinstance(settings[1], str)
    seam.forget_module_sources()
    assert isinstance(seam.phase_seconds(), dict) and isinstance(seam.fx_graph_cache_hits(), int)
    monkeypatch.setattr(gate, "GATE", gate.Gate("2.99.0"))
    with pytest.warns(RuntimeWarning):
        assert seam.compiler_settings() is None
    seam.forget_module_sources()
    assert seam.phase_seconds() == {} and seam.fx_graph_cache_hits() == 0


# -- the traceable all-gather of compiled ZeRO-3 ----------------------------------------------

@pytest.fixture
def gloo_of_one():
    import torch.distributed as dist
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield dist.group.WORLD.group_name
    dist.destroy_process_group()


def test_the_traceable_all_gather_gathers_and_its_gradient_is_the_rank_s_part(fresh, gloo_of_one):
    gather = seam.traceable_all_gather()
    local = torch.arange(3.0, requires_grad=True)
    whole = gather(local, 1, gloo_of_one)
    assert whole.tolist() == [0.0, 1.0, 2.0] and whole.data_ptr() != local.data_ptr()
    (grad,) = torch.autograd.grad((whole * torch.tensor([1.0, 2.0, 3.0])).sum(), local)
    assert grad.tolist() == [1.0, 2.0, 3.0]   # the sum over one rank


def test_the_traceable_all_gather_compiles_into_a_graph(fresh, gloo_of_one):
    gather = seam.traceable_all_gather()
    f = torch.compile(lambda x: gather(x * 2, 1, gloo_of_one) + 1, fullgraph=True, backend="aot_eager")
    assert f(torch.ones(2)).tolist() == [3.0, 3.0]


def test_the_traceable_all_gather_is_off_with_the_gate_off(untested):
    with pytest.warns(RuntimeWarning, match="not the tested release"):
        assert seam.traceable_all_gather() is None


def test_the_traceable_all_gather_turns_off_when_its_ops_moved(fresh, monkeypatch):
    monkeypatch.setattr(torch.ops, "_c10d_functional", object())
    with pytest.warns(RuntimeWarning, match="'traceable_gather'"):
        assert seam.traceable_all_gather() is None
    assert not seam.hook_on("traceable_gather")

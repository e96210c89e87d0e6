"""The C loop behind the Threefry operator on the CPU: the same bits as the tensor code (every
input layout, the threaded path), one extern call in compiled code, and the tensor code
(eager and Inductor's fused kernel) wherever the loop cannot be built."""

from __future__ import annotations

import pytest
import torch
from torch._inductor.utils import run_and_get_code

from deepfn import _threefry, _threefry_native, random
from deepfn.random import _threefry2x32

PARITY = str(0x1BD11BDA)   # a constant of the cipher: in generated code only where it is inlined


def _words(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return random.randint(random.key(seed), shape, 0, 2**32)


def test_builds_here():
    # Inductor's CPU backend needs the same C compiler, so every machine that compiles has it.
    assert _threefry_native.native() is not None


@pytest.mark.parametrize("shapes", [
    [(), (), (), ()],
    [(3, 1), (1,), (4,), (3, 4)],            # broadcasting keys and counters
    [(5,), (5,), (5,), (5,)],                # one key per counter (split of a batch of keys)
    [(), (1,), (2, 70_000), (1,)],           # large: the threaded path
])
def test_equals_tensor_code(shapes):
    words = [_words(i, s) for i, s in enumerate(shapes)]
    native = _threefry_native.threefry2x32(*words)
    tensor = _threefry._eager(*words)
    assert native[0].shape == tensor[0].shape
    assert torch.equal(native[0], tensor[0]) and torch.equal(native[1], tensor[1])


def test_strided_and_transposed_inputs():
    k0, k1 = _words(0, ()), _words(1, ())
    x0, x1 = _words(2, (6, 8))[:, ::2], _words(3, (4, 6)).t()
    native = _threefry_native.threefry2x32(k0, k1, x0, x1)
    tensor = _threefry._eager(k0, k1, x0, x1)
    assert torch.equal(native[0], tensor[0]) and torch.equal(native[1], tensor[1])


def _compiled_with_code(*words):
    torch._dynamo.reset()
    with torch._inductor.config.patch(fx_graph_cache=False):
        out, codes = run_and_get_code(torch.compile(_threefry2x32, fullgraph=True), *words)
    torch._dynamo.reset()
    eager = _threefry._eager(*words)
    assert torch.equal(out[0], eager[0]) and torch.equal(out[1], eager[1])
    return "\n".join(codes)


def test_compiled_code_calls_the_loop_for_large_draws():
    code = _compiled_with_code(_words(0, (3, 1)), _words(1, (1,)), _words(2, (2000,)), _words(3, (3, 2000)))
    assert "threefry2x32" in code and PARITY not in code


def test_compiled_code_inlines_small_draws():
    # Key splits and small masks: an extern call's dispatch would cost more than the kernel.
    assert 3 * 700 < _threefry._EXTERN_MIN_PAIRS
    code = _compiled_with_code(_words(0, (3, 1)), _words(1, (1,)), _words(2, (700,)), _words(3, (3, 700)))
    assert PARITY in code


def test_without_the_loop_tensor_code_and_fused_kernel(monkeypatch):
    # Where no compiler builds the loop (and on accelerators) the op runs as tensor code and
    # Inductor inlines the cipher into one fused kernel: the same bits either way.
    words = [_words(0, (3, 1)), _words(1, (1,)), _words(2, (2000,)), _words(3, (3, 2000))]
    expected = _threefry_native.threefry2x32(*words)
    monkeypatch.setattr(_threefry_native, "native", lambda: None)
    assert _threefry_native.threefry2x32(*words) is None
    eager = _threefry2x32(*words)
    torch._dynamo.reset()
    with torch._inductor.config.patch(fx_graph_cache=False):
        compiled, codes = run_and_get_code(torch.compile(_threefry2x32, fullgraph=True), *words)
    torch._dynamo.reset()
    for y in (eager, compiled):
        assert torch.equal(y[0], expected[0]) and torch.equal(y[1], expected[1])
    assert PARITY in "\n".join(codes)


def test_failed_build_gives_none(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPFN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert _threefry_native.native.__wrapped__() is None
    assert not list(tmp_path.glob("*.so"))     # nothing half-written is left to load later


def test_built_library_is_reused(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPFN_CACHE_DIR", str(tmp_path))
    assert _threefry_native.native.__wrapped__() is not None
    (built,) = tmp_path.glob("threefry2x32-*.so")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))   # a second build would fail
    assert _threefry_native.native.__wrapped__() is not None
    assert list(tmp_path.glob("threefry2x32-*.so")) == [built]

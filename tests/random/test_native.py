"""The C loop behind the Threefry operator on the CPU: the same bits as the tensor code (every
input layout, the threaded path), one extern call in compiled code, and the tensor code
(eager and Inductor's fused kernel) wherever the loop cannot be built."""

from __future__ import annotations

import math
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch._inductor.utils import run_and_get_code

from deepfn import random
from deepfn.random import _threefry2x32
from deepfn.random import native as _threefry_native
from deepfn.random import threefry as _threefry

PARITY = str(0x1BD11BDA)   # a constant of the cipher: in generated code only where it is inlined
# The vector width each build must report through deepfn_threefry_isa(), by torch's capability name.
_VECTOR_BITS = {"AVX512": 512, "AVX2": 256, "DEFAULT": 0}


def _words(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return random.randint(random.key(seed), shape, 0, 2**32)


BUILT = _threefry_native.native() is not None
needs_loop = pytest.mark.skipif(not BUILT, reason="no C Threefry loop here (no C compiler or DEEPFN_NO_NATIVE=1)")


@pytest.mark.skipif(os.environ.get("DEEPFN_NO_NATIVE") == "1", reason="the loop is switched off")
@pytest.mark.skipif(not (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")), reason="no C compiler")
def test_builds_where_there_is_a_compiler():
    assert BUILT


@pytest.mark.parametrize("shapes", [
    [(), (), (), ()],
    [(3, 1), (1,), (4,), (3, 4)],            # broadcasting keys and counters
    [(5,), (5,), (5,), (5,)],                # one key per counter (split of a batch of keys)
    [(), (1,), (2, 70_000), (1,)],           # large: the threaded path
    [(), (), (2, 70_000), (2, 70_000)],      # one key, many counters: its own loop
    [(), (), (1,), (2, 70_000)],             # one key, one high word, many counters (how bits are drawn)
])
@needs_loop
def test_equals_tensor_code(shapes, monkeypatch):
    words = [_words(i, s) for i, s in enumerate(shapes)]
    threads = torch.get_num_threads()
    # Large draws are cut into one slice per thread, whatever the machine: with slices of at
    # least 2**14 the 140,000-word inputs run on 4 threads.
    monkeypatch.setattr(_threefry_native, "_PARALLEL_MIN", 1 << 14)
    torch.set_num_threads(4)
    try:
        native = _threefry_native.threefry2x32(*words)
    finally:
        torch.set_num_threads(threads)
    tensor = _threefry._eager(*words)
    assert native[0].shape == tensor[0].shape
    assert torch.equal(native[0], tensor[0]) and torch.equal(native[1], tensor[1])


def _tensor_code_bits(key: torch.Tensor, n: int) -> torch.Tensor:
    """random.bits as it is written for the operator: counters, the tensor cipher, concatenation."""
    half = (n + 1) // 2
    counter = torch.arange(half, dtype=torch.int64)
    y0, y1 = _threefry._eager(key[:1], key[1:], counter.new_zeros(1), counter)
    return torch.cat([y0, y1])[:n]


@pytest.mark.parametrize("n", [0, 1, 2, 7, 1000, 2 * 70_001 + 1])   # the last: odd, threaded
@needs_loop
def test_draw_equals_the_tensor_code_in_every_output_type(n, monkeypatch):
    key = random.key(11)
    words = _tensor_code_bits(key, n)
    threads = torch.get_num_threads()
    monkeypatch.setattr(_threefry_native, "_PARALLEL_MIN", 1 << 14)   # the largest n: 4 slices
    torch.set_num_threads(4)
    try:
        drawn = {dtype: _threefry_native.draw(key, n, dtype) for dtype in (torch.int64, torch.float32, torch.float64)}
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(drawn[torch.int64], words)
    assert torch.equal(drawn[torch.float32], (words >> 8).to(torch.float32) * 2.0 ** -24)
    assert torch.equal(drawn[torch.float64], (words >> 8).to(torch.float64) * 2.0 ** -24)
    assert all(d.shape == (n,) for d in drawn.values())


@needs_loop
def test_random_draws_take_the_one_pass_loop_eagerly_only(monkeypatch):
    calls = []
    draw = _threefry_native.draw
    monkeypatch.setattr(_threefry_native, "draw", lambda *a: calls.append(a[2]) or draw(*a))
    key = random.key(3)
    random.bits(key, 5), random.uniform(key, (4,)), random.normal(key, (3,))
    assert calls == [torch.int64, torch.float32, torch.float64]
    calls.clear()
    torch.func.vmap(lambda k: random.bits(k, 5))(random.split(key, 2))          # a batched key
    torch.func.grad(lambda x: (x * random.uniform(key, (4,))).sum())(torch.ones(4))   # under a transform
    assert calls == []   # small draws under transforms: tensor code (large ones: test_draw.py)
    random.bits(random.split(key, 2), 5)                                         # keys [2, 2]: one pass too
    assert calls == [torch.int64]


def test_draw_declines_what_the_loop_cannot_serve(monkeypatch):
    key = random.key(0)
    assert _threefry_native.draw(torch.zeros(2, 3, dtype=torch.int64), 4, torch.int64) is None   # not keys [..., 2]
    assert _threefry_native.draw(torch.tensor(5), 4, torch.int64) is None          # a scalar
    assert _threefry_native.draw(key.to("meta"), 4, torch.int64) is None           # not on the CPU
    assert _threefry_native.draw(key.int(), 4, torch.int64) is None                # not int64 words
    monkeypatch.setattr(_threefry_native, "native", lambda: None)
    assert _threefry_native.draw(key, 4, torch.int64) is None                      # no loop built


@pytest.mark.parametrize("dtype", [torch.int64, torch.float32, torch.float64])
@pytest.mark.parametrize("key_shape", [(3,), (2, 2), (0,), (5,)])
@needs_loop
def test_draw_for_many_keys_gives_one_row_per_key(key_shape, dtype, monkeypatch):
    monkeypatch.setattr(_threefry_native, "_PARALLEL_MIN", 1 << 10)   # (5,): 5 keys on 4 threads
    count = math.prod(key_shape)
    keys = random.split(random.key(13), max(count, 1))[:count].reshape(*key_shape, 2)
    keys = keys.transpose(0, -2) if keys.ndim == 3 else keys   # not contiguous
    n = 1001 if key_shape != (5,) else 2 * 2000 + 1
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        out = _threefry_native.draw(keys, n, dtype)
    finally:
        torch.set_num_threads(threads)
    assert out.shape == (*keys.shape[:-1], n) and out.dtype == dtype
    flat = out.reshape(-1, n)
    for row, key in zip(flat, keys.reshape(-1, 2), strict=True):
        words = _tensor_code_bits(key, n)
        assert torch.equal(row, words if dtype == torch.int64 else (words >> 8).to(dtype) * 2.0 ** -24)


@needs_loop
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


@needs_loop
def test_compiled_code_calls_the_loop_for_large_draws():
    code = _compiled_with_code(_words(0, (3, 1)), _words(1, (1,)), _words(2, (2000,)), _words(3, (3, 2000)))
    assert "torch.ops.deepfn.threefry2x32" in code and PARITY not in code


@needs_loop
def test_words_the_loop_cannot_read_go_to_the_tensor_code():
    small = [w.to(torch.int32) for w in (_words(0, ()), _words(1, ()), _words(2, (5,)), _words(3, (5,)))]
    assert _threefry_native.threefry2x32(*small) is None


@needs_loop
def test_compiled_code_inlines_small_draws():
    # Key splits and small masks: an extern call's dispatch would cost more than the kernel.
    assert 3 * 700 < _threefry._EXTERN_MIN_PAIRS
    code = _compiled_with_code(_words(0, (3, 1)), _words(1, (1,)), _words(2, (700,)), _words(3, (3, 700)))
    assert PARITY in code


@needs_loop
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


def _fake_compiler(path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.mark.parametrize("compiler", [
    "missing",                     # not installed
    "fails",                       # runs and fails with a message
    "half-writes",                 # writes part of the output file, then fails
])
def test_failed_build_warns_and_gives_none(monkeypatch, tmp_path, compiler):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEEPFN_CACHE_DIR", str(cache))
    monkeypatch.delenv("DEEPFN_NO_NATIVE", raising=False)
    if compiler == "missing":
        cc = str(tmp_path / "no-such-compiler")
    elif compiler == "fails":
        cc = _fake_compiler(tmp_path / "cc", "echo 'fatal: no headers' >&2; exit 1")
    else:
        cc = _fake_compiler(tmp_path / "cc", 'while [ "$1" != -o ]; do shift; done; printf ELF > "$2"; exit 1')
    monkeypatch.setenv("CC", cc)
    with pytest.warns(RuntimeWarning, match="could not be built") as record:
        assert _threefry_native.native.__wrapped__() is None
    if compiler == "fails":
        assert any("fatal: no headers" in str(w.message) for w in record)
    assert not [p for p in cache.rglob("*") if p.is_file()]   # nothing half-written is left to load later


@needs_loop
def test_a_compiler_without_vector_flags_builds_the_plain_loop(monkeypatch, tmp_path):
    # A compiler for another target, or an old one, rejects -mavx512f and -mavx2.
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no gcc or cc to wrap")
    cc = _fake_compiler(tmp_path / "cc", 'case "$*" in *-mavx*) echo "unknown option -mavx" >&2; exit 1;; esac\n'
                                          f'exec {gcc} "$@"')
    monkeypatch.setenv("CC", cc)
    monkeypatch.setenv("DEEPFN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(_threefry_native, "_cpu_capability", lambda: "AVX512")
    lib = _threefry_native.native.__wrapped__()
    assert lib is not None and lib.deepfn_threefry_isa() == 0
    monkeypatch.setattr(_threefry_native, "native", lambda: lib)
    key = random.key(16)
    assert torch.equal(_threefry_native.draw(key, 999, torch.int64), _tensor_code_bits(key, 999))


def test_compiler_with_arguments(monkeypatch, tmp_path):
    # $CC as a shell would split it ("ccache gcc", "gcc -std=c11")
    monkeypatch.setenv("CC", "env gcc -std=c11")
    assert _threefry_native._compiler() == ["env", "gcc", "-std=c11"]


@needs_loop
def test_a_cached_file_that_does_not_load_is_rebuilt(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPFN_CACHE_DIR", str(tmp_path))
    first = _threefry_native._variants(_threefry_native._cpu_capability())[0]   # the build native() loads
    built = _threefry_native._target(_threefry_native._compiler(), first)
    built.write_bytes(b"not a shared library")     # e.g. truncated by a full disk
    assert _threefry_native.native.__wrapped__() is not None
    assert built.read_bytes()[:4] == b"\x7fELF"


@needs_loop
def test_built_library_is_reused(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPFN_CACHE_DIR", str(tmp_path))
    assert _threefry_native.native.__wrapped__() is not None
    (built,) = tmp_path.glob("threefry2x32-*.so")
    monkeypatch.setattr(_threefry_native, "_build", None)   # a second build would raise TypeError
    assert _threefry_native.native.__wrapped__() is not None
    assert list(tmp_path.glob("threefry2x32-*.so")) == [built]


@pytest.mark.parametrize("shapes", [
    [(1,), (1,), (1,), (1024,)], [(1,), (), (7,), (7,)], [(3, 1), (1,), (4,), (3, 4)], [(1, 1), (5,)],
    [(2, 1), (1, 3)], [(), ()], [(0,), (1,)], [(4, 1), (1, 1, 1)], [(3,), (4,)],
])
def test_broadcast_shape_equals_torchs(shapes):
    sizes = [torch.Size(s) for s in shapes]
    try:
        want = torch.broadcast_shapes(*sizes)
    except RuntimeError:
        with pytest.raises(RuntimeError):
            _threefry_native._broadcast_shape(*sizes)
        return
    assert _threefry_native._broadcast_shape(*sizes) == want


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return {w for line in f if line.startswith("flags") for w in line.split(":", 1)[1].split()}
    except OSError:
        return set()


@pytest.mark.parametrize("isa", ["default", "avx2", "avx512f"])
@needs_loop
def test_every_vector_variant_gives_the_tensor_codes_bits(isa, tmp_path, monkeypatch):
    # The loader builds the machine's variant only; this builds each one, so that the ones
    # this machine would not pick are checked too.
    if platform.machine() != "x86_64" or (isa != "default" and isa not in _cpu_flags()):
        pytest.skip(f"this CPU cannot run {isa} code")
    capability = {"default": "DEFAULT", "avx2": "AVX2", "avx512f": "AVX512"}[isa]
    src, lib_path = tmp_path / "threefry.c", tmp_path / "threefry.so"
    src.write_text(_threefry_native._SOURCE)
    subprocess.run([*_threefry_native._compiler(), *_threefry_native._FLAGS, *_threefry_native._ISA_FLAGS[capability],
                    "-o", str(lib_path), str(src)], check=True, capture_output=True, timeout=120)
    assert _threefry_native._load(lib_path).deepfn_threefry_isa() == _VECTOR_BITS[capability]
    monkeypatch.setattr(_threefry_native, "native", lambda: _threefry_native._load(lib_path))
    key, n = random.key(12), 2 * 1031 + 1
    words = _tensor_code_bits(key, n)
    assert torch.equal(_threefry_native.draw(key, n, torch.int64), words)
    assert torch.equal(_threefry_native.draw(key, n, torch.float32), (words >> 8).to(torch.float32) * 2.0 ** -24)
    assert torch.equal(_threefry_native.draw(key, n, torch.float64), (words >> 8).to(torch.float64) * 2.0 ** -24)
    keys = random.split(key, 3)
    assert torch.equal(_threefry_native.draw(keys, n, torch.float32)[2], _threefry_native.draw(keys[2], n, torch.float32))
    for shapes in ([(), (), (777,), (777,)], [(), (), (), (777,)], [(5,), (5,), (5,), (5,)]):
        cipher = [_words(i, s) for i, s in enumerate(shapes)]
        native, tensor = _threefry_native.threefry2x32(*cipher), _threefry._eager(*cipher)
        assert torch.equal(native[0], tensor[0]) and torch.equal(native[1], tensor[1])


@needs_loop
def test_the_loaded_loop_is_the_build_for_torchs_cpu_capability(monkeypatch, tmp_path):
    # The vector build is 2-6x faster than the plain one; a loader that fell back to the plain
    # copy on a vector CPU would give the same bits, so only this check would see it.
    monkeypatch.setenv("DEEPFN_CACHE_DIR", str(tmp_path / "cache"))
    capability = _threefry_native._cpu_capability()
    want = _VECTOR_BITS.get(capability, 0)
    assert _threefry_native.native.__wrapped__().deepfn_threefry_isa() == want
    for lower, bits in (("AVX2", 256), ("DEFAULT", 0)):
        if want >= bits:
            monkeypatch.setattr(_threefry_native, "_cpu_capability", lambda lower=lower: lower)
            assert _threefry_native.native.__wrapped__().deepfn_threefry_isa() == bits


def test_variants_are_tried_from_the_cpus_isa_down():
    flags = _threefry_native._ISA_FLAGS
    assert _threefry_native._variants("AVX512") == (flags["AVX512"], flags["AVX2"], ())
    assert _threefry_native._variants("AVX2") == (flags["AVX2"], ())
    assert _threefry_native._variants("DEFAULT") == ((),)
    assert _threefry_native._variants("SVE256") == ((),)   # another architecture's capability: plain C


# Planted libraries: loading one runs its constructor, which here leaves a marker file (at the
# path in $DEEPFN_PLANTED_MARKER). Nothing may load them.
_CONSTRUCTOR = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
    const char *marker = getenv("DEEPFN_PLANTED_MARKER");
    FILE *f = marker ? fopen(marker, "w") : NULL;
    if (f) { fputs("ran", f); fclose(f); }
}
"""
_OTHER_USER = 12345


def _as_other_user(path) -> None:
    try:
        os.chown(path, _OTHER_USER, _OTHER_USER, follow_symlinks=False)
    except PermissionError:
        pytest.skip("simulating another user's file needs root (os.chown)")


def _planted_library(path, tmp_path, source: str = _threefry_native._SOURCE):
    """A library at ``path`` with the loop's functions (``source``) and a constructor that leaves
    a marker; checked to leave one when a process loads it (else these tests could not fail)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    src = tmp_path / "planted.c"
    src.write_text(source + _CONSTRUCTOR)
    subprocess.run([*_threefry_native._compiler(), "-shared", "-fPIC", "-o", str(path), str(src)], check=True,
                   capture_output=True, timeout=120)
    proof = tmp_path / "proof"
    subprocess.run([sys.executable, "-c", "import ctypes, sys; ctypes.CDLL(sys.argv[1])", str(path)], check=True,
                   env={**os.environ, "DEEPFN_PLANTED_MARKER": str(proof)}, timeout=120)
    assert proof.read_text() == "ran"
    return path


def _cached_target():
    first = _threefry_native._variants(_threefry_native._cpu_capability())[0]   # the build native() loads
    return _threefry_native._target(_threefry_native._compiler(), first)


def _assert_draws_right(lib, monkeypatch):
    assert lib is not None and all(hasattr(lib, name) for name in _threefry_native._SYMBOLS)
    monkeypatch.setattr(_threefry_native, "native", lambda: lib)
    key = random.key(21)
    assert torch.equal(_threefry_native.draw(key, 777, torch.int64), _tensor_code_bits(key, 777))
    words = [_words(i, (33,)) for i in range(4)]
    native, tensor = _threefry_native.threefry2x32(*words), _threefry._eager(*words)
    assert torch.equal(native[0], tensor[0]) and torch.equal(native[1], tensor[1])


@pytest.mark.parametrize("planted", ["another user's", "group-writable", "a symbolic link"])
@needs_loop
def test_a_planted_library_in_the_cache_folder_is_never_loaded(planted, monkeypatch, tmp_path):
    cache, marker = tmp_path / "cache", tmp_path / "marker"
    monkeypatch.setenv("DEEPFN_CACHE_DIR", str(cache))
    monkeypatch.setenv("DEEPFN_PLANTED_MARKER", str(marker))
    cache.mkdir(mode=0o700)
    target = _cached_target()
    if planted == "a symbolic link":
        target.symlink_to(_planted_library(tmp_path / "elsewhere" / "lib.so", tmp_path))
        reason = "is a symbolic link"
    else:
        _planted_library(target, tmp_path)
        if planted == "group-writable":
            target.chmod(0o775)
            reason = r"is writable by group or others \(mode 0o775\)"
        else:
            _as_other_user(target)
            reason = f"is owned by user id {_OTHER_USER}"
    with pytest.warns(RuntimeWarning, match=f"not loading the C Threefry loop's library .*{reason}.*building it"):
        lib = _threefry_native.native.__wrapped__()
    assert not marker.exists()
    _assert_draws_right(lib, monkeypatch)
    built = os.lstat(target)   # replaced by our own build
    assert stat.S_ISREG(built.st_mode) and built.st_uid == os.getuid() and stat.S_IMODE(built.st_mode) == 0o700


@pytest.mark.parametrize("folder", ["shared and writable by all", "another user's"])
@needs_loop
def test_a_library_in_a_cache_folder_others_can_write_is_never_loaded(folder, monkeypatch, tmp_path):
    cache, marker = tmp_path / "cache", tmp_path / "marker"
    monkeypatch.setenv("DEEPFN_CACHE_DIR", str(cache))
    monkeypatch.setenv("DEEPFN_PLANTED_MARKER", str(marker))
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))   # where the private build goes
    cache.mkdir()
    target = _planted_library(_cached_target(), tmp_path)
    if folder == "another user's":
        cache.chmod(0o755)
        _as_other_user(target)
        _as_other_user(cache)
    else:
        cache.chmod(0o777)
    with pytest.warns(RuntimeWarning, match=rf"not loaded from deepfn's cache folder \(the folder {cache} .*built for "
                                            r"this process alone"):
        lib = _threefry_native.native.__wrapped__()
    assert not marker.exists()
    _assert_draws_right(lib, monkeypatch)
    assert os.lstat(target).st_uid == (_OTHER_USER if folder == "another user's" else os.getuid())   # left alone
    assert not list(tmp_path.glob(".threefry-*"))   # the private build folder is gone


@needs_loop
def test_the_temporary_fallback_folder_created_by_another_user_is_not_used(monkeypatch, tmp_path):
    # Without a home folder the cache is <tmp>/deepfn-cache-<uid>: another user can create it first.
    shared_tmp, marker = tmp_path / "tmp", tmp_path / "marker"
    shared_tmp.mkdir()
    shared_tmp.chmod(0o1777)
    monkeypatch.delenv("DEEPFN_CACHE_DIR", raising=False)
    monkeypatch.setenv("DEEPFN_PLANTED_MARKER", str(marker))
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(shared_tmp))

    def no_home():
        raise RuntimeError("Could not determine home directory.")
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    fallback = shared_tmp / f"deepfn-cache-{os.getuid()}"
    target = _planted_library(_cached_target(), tmp_path)
    assert target.parent == fallback
    fallback.chmod(0o777)
    _as_other_user(target)
    _as_other_user(fallback)
    with pytest.warns(RuntimeWarning, match=rf"the folder {fallback} is owned by user id {_OTHER_USER}"):
        lib = _threefry_native.native.__wrapped__()
    assert not marker.exists()
    _assert_draws_right(lib, monkeypatch)


@needs_loop
def test_a_library_of_ours_lacking_a_function_is_rebuilt(monkeypatch, tmp_path):
    # An older build, say: it loads, but binding its functions raised AttributeError on every draw.
    monkeypatch.setenv("DEEPFN_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir(mode=0o700)
    target = _cached_target()
    src = tmp_path / "old.c"
    src.write_text("int deepfn_threefry_isa(void) { return 0; }\n")
    subprocess.run([*_threefry_native._compiler(), "-shared", "-fPIC", "-o", str(target), str(src)], check=True,
                   capture_output=True, timeout=120)
    with pytest.raises(OSError, match=r"lacks deepfn_threefry2x32, deepfn_threefry_draw, deepfn_threefry_draw_keys"):
        _threefry_native._load(target)
    lib = _threefry_native.native.__wrapped__()
    _assert_draws_right(lib, monkeypatch)
    copy = tmp_path / "rebuilt.so"   # a new name: the loader would hand back the old library for this one
    shutil.copy(target, copy)
    assert _threefry_native._load(copy) is not None


@needs_loop
def test_the_cache_folder_is_made_private_and_the_library_written_privately(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEEPFN_CACHE_DIR", str(cache))
    old = os.umask(0)
    try:
        assert _threefry_native.native.__wrapped__() is not None
    finally:
        os.umask(old)
    (built,) = cache.glob("threefry2x32-*.so")
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700 and stat.S_IMODE(os.stat(built).st_mode) == 0o700
    assert [p.name for p in cache.iterdir()] == [built.name]   # no temporary folder left


def test_the_c_source_is_package_data_and_names_the_build(monkeypatch):
    # An installed wheel must carry threefry.c (pyproject's package-data), and the cached
    # library's name must change with its text, so that an edited source is built afresh.
    from importlib import resources
    text = resources.files("deepfn.random").joinpath("threefry.c").read_text(encoding="utf-8")
    assert text == _threefry_native._SOURCE and "deepfn_threefry2x32" in text
    compiler = ["cc"]
    before = _threefry_native._target(compiler)
    monkeypatch.setattr(_threefry_native, "_SOURCE", text + "\n/* edited */\n")
    assert _threefry_native._target(compiler) != before

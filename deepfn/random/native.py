"""Threefry-2x32-20 as one compiled C loop for CPU tensors, built on first use.

Why: as tensor code the cipher is ~140 elementwise passes over memory eagerly, and
Inductor's C++ backend inlines those ~140 operations into every kernel that draws bits
(about half of the generated code of a Transformer step with dropout, and of its compile
time). One C loop is a single pass eagerly and a single extern call in a compiled graph.

The shared library is built with the system's C compiler (``$CC``, else ``cc`` or ``gcc``),
once per source version, compiler and architecture, into deepfn's cache folder
(:func:`deepfn._private_files.cache_root`: ``$DEEPFN_CACHE_DIR``, default ``~/.cache/deepfn``),
written atomically so that parallel processes can race. Without a compiler, or if the build
fails (a warning says why), :func:`native` returns ``None`` and callers use the tensor code: the
bits are the same (both are exact integer arithmetic; tests compare them).

The library is code (loading it runs its constructors), so its folder is kept private
(:func:`deepfn._private_files.private_dir`: ``0700``, the current user's, writable by nobody
else) and a cached file is loaded only when it is a regular file of the current user's that
nobody else can write (:func:`deepfn._private_files.trusted`). A file that fails is never
loaded: a warning, then it is built afresh over it; where the folder itself fails (the
temporary-folder fallback created by another user), the loop is built for this process alone in
a new private temporary folder. The check and the load are two steps, which is safe because
only the current user can write in a private folder.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import torch

from .._private_files import cache_root, private_dir, trusted

__all__ = ["native", "threefry2x32", "draw"]

# The C source is package data (threefry.c beside this module), read as text: it is hashed into
# the build recipe, so a changed source builds a new library.
_SOURCE = resources.files(__package__).joinpath("threefry.c").read_text(encoding="utf-8")

# Below this many word pairs a thread pool costs more than it saves: the vectorized loop takes
# ~0.3 ms for 2**18 pairs (AVX-512), about what starting the pool costs; larger draws are
# bound by the page faults of their fresh output more than by the cipher.
_PARALLEL_MIN = 1 << 18


_FLAGS = ("-O3", "-shared", "-fPIC")
# The build for each of torch's CPU capabilities (``torch.backends.cpu.get_cpu_capability()``,
# which checks that the OS saves the vector registers, and which ``$ATEN_CPU_CAPABILITY`` can
# lower); each falls back to the ones after it where the compiler rejects its flag. Not GCC's
# ``target_clones``: its load-time resolver picked the plain copy on an AVX-512 machine whose
# ``__builtin_cpu_supports`` reported AVX2 and AVX-512 (10^7 uniforms: 30 ms plain, 14 ms
# AVX2, 5.4 ms AVX-512, one thread), and it needs GNU ifunc, which musl lacks.
_ISA_FLAGS = {"AVX512": ("-mavx512f",), "AVX2": ("-mavx2",), "DEFAULT": ()}


def _variants(capability: str) -> tuple[tuple[str, ...], ...]:
    """The builds to try, best first, for a CPU of torch's ``capability``."""
    order = list(_ISA_FLAGS)
    start = order.index(capability) if capability in order else order.index("DEFAULT")
    return tuple(_ISA_FLAGS[name] for name in order[start:])


def _cpu_capability() -> str:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "DEFAULT"
    return torch.backends.cpu.get_cpu_capability()


def _compiler() -> list[str]:
    """The compiler's command line: ``$CC`` split like a shell would ("ccache gcc"), else cc or gcc."""
    cc = shlex.split(os.environ.get("CC", "")) or [c for c in (shutil.which("cc") or shutil.which("gcc"),) if c]
    if not cc:
        raise OSError("no C compiler found ($CC, cc or gcc)")
    return cc


def _build(compiler: list[str], variant: tuple[str, ...], target: Path | None) -> ctypes.CDLL:
    """Compile the loop in a new private temporary folder (in ``target``'s folder, or the
    system's when ``target`` is ``None``), load it from there (checking its symbols), then move
    it to ``target``: atomic, a racing process sees no library or a whole one. Loading from a
    fresh name also gets this build, not a stale library already loaded from ``target``'s name
    (the dynamic loader reuses a library loaded under the same name)."""
    with tempfile.TemporaryDirectory(dir=None if target is None else target.parent,   # 0700
                                     prefix=".threefry-") as tmp:
        src, built = Path(tmp) / "threefry.c", Path(tmp) / "threefry.so"
        src.write_text(_SOURCE)
        done = subprocess.run([*compiler, *_FLAGS, *variant, "-o", str(built), str(src)], capture_output=True,
                              text=True, timeout=120)
        if done.returncode != 0:
            raise OSError(f"{' '.join(compiler)} exited with {done.returncode}: {done.stderr.strip()[-500:]}")
        os.chmod(built, 0o700)
        lib = _load(built)
        if target is not None:
            os.replace(built, target)
    return lib


# Every function the loader binds: a library lacking one (an older build, say) is rebuilt.
_SYMBOLS = ("deepfn_threefry2x32", "deepfn_threefry_isa", "deepfn_threefry_draw", "deepfn_threefry_draw_keys")


def _load(path: Path) -> ctypes.CDLL:
    """The library at ``path`` with its functions' types set; ``OSError`` when it does not load
    or lacks one of :data:`_SYMBOLS`. Loading runs the library's constructors: callers check
    the file first (:func:`_cached`)."""
    lib = ctypes.CDLL(str(path))
    missing = [name for name in _SYMBOLS if not hasattr(lib, name)]
    if missing:
        raise OSError(f"{path} lacks {', '.join(missing)}")
    fn = lib.deepfn_threefry2x32
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64] * 4 + [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    lib.deepfn_threefry_isa.restype = ctypes.c_int
    lib.deepfn_threefry_isa.argtypes = []
    for draw in (lib.deepfn_threefry_draw, lib.deepfn_threefry_draw_keys):
        draw.restype = None
        draw.argtypes = [ctypes.c_void_p, *[ctypes.c_int64] * 4, ctypes.c_int, ctypes.c_void_p]
    return lib


def _target(compiler: list[str], variant: tuple[str, ...] = ()) -> Path:
    recipe = "\0".join([_SOURCE, *compiler, *_FLAGS, *variant, platform.machine()])
    return cache_root() / f"threefry2x32-{hashlib.sha256(recipe.encode()).hexdigest()[:16]}.so"


def _cached(compiler: list[str], variant: tuple[str, ...]) -> ctypes.CDLL:
    """The library from deepfn's (private) cache folder, built there when it is missing, when
    it fails the owner and mode checks (a warning; it is never loaded), or when it does not load
    or lacks a symbol."""
    target = _target(compiler, variant)
    if not os.path.lexists(target):
        return _build(compiler, variant, target)
    reason = trusted(target)
    if reason is not None:
        warnings.warn(f"deepfn: not loading the C Threefry loop's library ({reason}); building it afresh",
                      RuntimeWarning, stacklevel=4)
        return _build(compiler, variant, target)
    try:
        return _load(target)
    except OSError:   # truncated, foreign, or an older build lacking a symbol: build again over it
        return _build(compiler, variant, target)


@functools.cache
def native() -> ctypes.CDLL | None:
    """The loaded library (``deepfn_threefry2x32``), or ``None`` where it cannot be built.

    The cached file is named by a digest of the source, the compiler, its flags and the
    architecture (a home folder shared by x86 and ARM machines holds one of each); a cached
    file that does not load, or lacks a function, is rebuilt once, and one that fails the owner
    and mode checks is never loaded (see the module's docstring). The build is the one for the
    CPU's vector ISA (``_variants``); where the compiler rejects its flag, the next narrower one
    is tried. A failed build warns once per process, with the compiler's message, and the
    tensor code is used.
    """
    if sys.platform == "win32" or os.environ.get("DEEPFN_NO_NATIVE") == "1":
        return None
    untrusted = private_dir(cache_root())
    if untrusted is not None:
        warnings.warn(f"deepfn: the C Threefry loop is not loaded from deepfn's cache folder ({untrusted}); it is "
                      "built for this process alone in a new private temporary folder", RuntimeWarning, stacklevel=2)
    failure: Exception | None = None
    for variant in _variants(_cpu_capability()):
        try:
            compiler = _compiler()
            return _build(compiler, variant, None) if untrusted is not None else _cached(compiler, variant)
        except (OSError, subprocess.SubprocessError) as exc:
            failure = exc
    warnings.warn(f"deepfn: the C Threefry loop could not be built ({failure}); random bits on the CPU use "
                  "the (slower) tensor code instead, with the same values. Set DEEPFN_NO_NATIVE=1 to "
                  "silence this.", RuntimeWarning, stacklevel=2)
    return None


def _word(x: torch.Tensor, shape: torch.Size) -> tuple[torch.Tensor, int]:
    """``x`` as a flat array read with step 1, or as one word read with step 0."""
    if x.numel() == 1:
        return x.reshape(1), 0
    if x.shape != shape or not x.is_contiguous():
        x = x.expand(shape).contiguous()
    return x.reshape(-1), 1


def _broadcast_shape(*shapes: torch.Size) -> torch.Size:
    """``torch.broadcast_shapes(*shapes)``; without its Python (~10 us) when every shape is the
    largest one or holds a single element, as the words of a draw do (one key, many counters)."""
    largest = max(shapes, key=lambda s: (len(s), math.prod(s)))
    if all(s == largest or math.prod(s) == 1 for s in shapes):
        return largest
    return torch.broadcast_shapes(*shapes)


def threefry2x32(k0: torch.Tensor, k1: torch.Tensor, x0: torch.Tensor,
                 x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cipher on CPU ``int64`` words by the C loop: ``(y0, y1)``, or ``None`` without it (no
    library, or inputs that are not CPU ``int64`` tensors: the tensor code handles those).

    Large arrays are cut into one slice per intra-op thread (``torch.get_num_threads()``).
    """
    words4 = (k0, k1, x0, x1)
    if any(w.dtype != torch.int64 or w.device.type != "cpu" for w in words4):
        return None   # the C loop reads 8-byte words from CPU memory only
    lib = native()
    if lib is None:
        return None
    shape = _broadcast_shape(k0.shape, k1.shape, x0.shape, x1.shape)
    words = [_word(w, shape) for w in words4]
    n = shape.numel()
    y0 = torch.empty(shape, dtype=torch.int64, device="cpu")
    y1 = torch.empty(shape, dtype=torch.int64, device="cpu")

    def run(lo: int, hi: int) -> None:
        args = []
        for w, step in words:
            args += [w.data_ptr() + lo * step * 8, step]
        lib.deepfn_threefry2x32(*args, y0.data_ptr() + lo * 8, y1.data_ptr() + lo * 8, hi - lo)

    _in_slices(run, n)
    return y0, y1


# What draw() writes: the words, or their top 24 bits as a [0, 1) float of this dtype.
_DRAW_KINDS = {torch.int64: 0, torch.float32: 1, torch.float64: 2}


def draw(key: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor | None:
    """``random.bits(key, n)`` by the C loop in one pass, as ``int64 [..., n]`` words (``dtype``
    int64), or as ``(words >> 8) * 2**-24`` in float32 or float64 (``dtype``): the same values
    as the tensor code, without its counter array, concatenation and conversion passes, for
    CPU ``int64`` keys ``[..., 2]`` (one row of ``n`` per key). ``None`` without the loop or
    for other keys."""
    if key.ndim == 0 or key.shape[-1] != 2 or key.dtype != torch.int64 or key.device.type != "cpu":
        return None
    lib = native()
    if lib is None:
        return None
    keys = key.reshape(-1, 2).contiguous()
    count, half, kind = keys.shape[0], (n + 1) // 2, _DRAW_KINDS[dtype]
    out = torch.empty((*key.shape[:-1], n), dtype=dtype, device="cpu")
    if count == 1:   # slices of the counters
        _in_slices(lambda lo, hi: lib.deepfn_threefry_draw(keys.data_ptr(), lo, hi, half, n, kind, out.data_ptr()),
                   half)
    else:            # slices of the keys
        _in_slices(lambda lo, hi: lib.deepfn_threefry_draw_keys(keys.data_ptr(), lo, hi, half, n, kind,
                                                                out.data_ptr()), count, pairs_each=half)
    return out


def _in_slices(run: Callable[[int, int], None], n: int, pairs_each: int = 1) -> None:
    """``run(lo, hi)`` over ``[0, n)``, items of ``pairs_each`` word pairs: in one slice per
    intra-op thread for large work (ctypes releases the GIL during each call, so the slices run
    in parallel)."""
    threads = max(1, min(torch.get_num_threads(), n, n * pairs_each // _PARALLEL_MIN))
    if threads == 1:
        run(0, n)
        return
    from concurrent.futures import ThreadPoolExecutor
    bounds = [n * t // threads for t in range(threads + 1)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, bounds[:-1], bounds[1:]))

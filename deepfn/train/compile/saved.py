"""Compiled steps saved to disk, so that a later process starts without tracing the step again
(``compile_cache=directory`` of ``make_train_step``, ``make_eval_step`` and
``make_ensemble_train_step``).

Why: Inductor's on-disk cache spares a new process the C++ compile, but Dynamo still traces
the whole step's Python again (a grad transform, the model, the optimizer over every
parameter): 12.2 s for the first call of the 3+3-layer Transformer step on a 2-core CPU,
against 1.2 s to load the saved step and run it once. ``torch.compile(fn).aot_compile``
captures the traced program, its guards and Inductor's code in one file; this module decides
when such a file may be used.

A file is used only when all of this matches the current process, else the step is compiled
again and the file replaced (with a warning when the file was unreadable or stale):

- its name: a :func:`~deepfn.train.compile.fingerprint.fingerprint` of the step function's closure (the
  model's structure and hyper-parameters, the loss, the optimizer and its settings, every
  function's bytecode), of the inputs' structure, dtypes, shapes and devices, of the
  versions of Python and torch, of the CPU's vector instruction set, of global modes (grad,
  autocast, default dtype and device, deterministic algorithms, matmul precision) and of the
  Dynamo, Inductor and functorch settings;
- torch's own compatibility check of the saved file (torch version, device);
- the source of every module whose code was traced, compared in full with the source saved
  in the file (a module-level constant edited in a script invalidates it);
- the module-level names of every traced module outside torch that hold constants (numbers,
  strings, flags, dtypes), tensors (their metadata), functions, classes, dataclasses or tuples
  of these, compared with their fingerprints when the file was saved: a name reassigned at run
  time (``config.SCALE = 2.0``, ``REDUCE = torch.sum``) invalidates it, as Dynamo's own guard
  on that global would (torch drops guards on globals when it saves);
- the guards Dynamo kept for the inputs (and global state: grad mode, threads, autocast).

Not covered: a module-level dict, list, set or other object whose contents are edited, or
which is rebound, at run time, when a compiled step read it while it was traced.

A file is this module's format line, an HMAC line, a header line (the module names'
fingerprints) and torch's serialized compiled function; it is written (mode ``0600``) to a
temporary file and renamed, so a crash leaves the previous file or none.

The folder holds code: loading a saved step unpickles it, and unpickling can run anything. Only
point ``compile_cache`` at a folder you trust. deepfn creates it ``0700`` and uses it only while
it is the current user's and writable by nobody else (else a warning, and steps compile unsaved);
a file is opened only when it is a regular file of the current user's, writable by nobody else
(:mod:`deepfn._private_files`), and unpickled only when its HMAC-SHA256, made with the user's
secret key over the rest of the file, matches. Any other file is not unpickled: a warning
naming it and why, then the step compiles again and the file is replaced.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import functools
import hmac
import importlib
import inspect
import io
import json
import os
import sys
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ... import _torch
from ..._private_files import (
    UntrustedFileError,
    hmac_sha256,
    private_dir,
    read_trusted,
    secret_key,
    write_private,
)
from .dynamic import DynamicDims
from .fingerprint import SCALAR_TYPES, fingerprint
from .first_call import CompileOnFirstCall, inductor_options
from .guard_pickling import keep_functions_whole
from .own_code import with_own_code

__all__ = ["SavedCompile", "closure_objects"]

_SUFFIX = ".pt2"
_MAGIC = b"deepfn compiled step, format 2\n"
_MAC_HEX = 64   # the HMAC-SHA256 line: 32 bytes as hex
_VARIANTS = 8   # files per name: a dynamic step's guards may reject a size (0 or 1, other strides)


class SavedCompile:
    """``run(*args)``: ``fn`` compiled as one graph (``torch.compile(fn, fullgraph=True)``),
    each input signature's compiled program saved in ``directory`` and loaded from there by
    later processes.

    ``what`` names the caller in messages. Files that cannot be read, or that describe other
    code or settings, are compiled again and replaced; a step that cannot be saved (an
    object torch cannot serialize in the step's closure) runs as a plain ``torch.compile``d
    function, with a warning.
    """

    def __init__(self, fn: Callable, directory: str | os.PathLike, what: str, *, training: bool = True,
                 dynamic: DynamicDims | None = None) -> None:
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"{what}: compile_cache must be a directory path (str or os.PathLike); "
                            f"got {type(directory).__name__}")
        self._fn = fn
        self._dir = Path(directory)
        self._what = what
        self._training = training
        self._dynamic = dynamic
        self._externals = closure_objects(fn)
        self._ready: list[Any] = []   # loaded or compiled programs, each checked by its guards
        self._held: set[Path] = set()   # the files whose programs are in _ready
        self._fallback: CompileOnFirstCall | None = None
        self._programs = 0   # compiled or loaded here (the fallback counts its own)

    def compiled_programs(self) -> int | None:
        """The programs this step has compiled or loaded from its folder so far (each variant
        counts one), or None when its plain fallback cannot count its compiles."""
        if self._fallback is None:
            return self._programs
        fallback = self._fallback.compiled_programs()
        return None if fallback is None else self._programs + fallback

    def __call__(self, *args: Any) -> Any:
        for i, program in enumerate(self._ready):
            if program.guard_check(*args):   # ~20 us each: the last one used is tried first
                if i:
                    self._ready.insert(0, self._ready.pop(i))
                return program(*args)
        if self._fallback is not None:
            return self._fallback(*args)
        untrusted = self._untrusted_folder()
        if untrusted is not None:
            return self._run_unsaved(args, untrusted)
        try:
            first = self.path_for(args)
        except Exception as error:   # an object the fingerprint cannot read (a __repr__ that raises)
            return self._run_unsaved(args, f"{type(error).__name__}: {error}")
        ran, out, target = self._run_saved(first, args)
        if ran:
            return out
        program, unsaved = self._compile(target, args)
        if program is None:
            return self._run_unsaved(args, unsaved)
        self._programs += 1
        self._held.add(target)
        program.disable_guard_check()
        self._ready.insert(0, program)
        return program(*args)

    def _run_saved(self, first: Path, args: tuple[Any, ...]) -> tuple[bool, Any, Path]:
        """Run the first saved variant of ``first`` whose guards accept ``args``: ``(True, its
        output, _)``; else ``(False, None, where a new compile is saved)``: the first stale or free
        name, or the last variant when all are taken."""
        target = None
        for path in _variants(first):
            if path in self._held:   # already in _ready, and its guards rejected these inputs
                continue
            program = self._load(path)
            if program is None:
                target = target or path
                if not path.exists():   # variants are written in order: none after a missing one
                    break
                continue
            self._programs += 1
            program.disable_guard_check()   # checked by the caller on every call
            if not program.guard_check(*args):
                if self._dynamic is None:   # a static step's file is named by its inputs' shapes: stale
                    warnings.warn(f"{self._what}: not using the saved compiled step {path} (its guards reject "
                                  f"these inputs); compiling it again", stacklevel=4)
                    target = target or path
                else:   # another variant's sizes: kept for them, so each file loads once
                    self._held.add(path)
                    self._ready.append(program)
                continue
            try:
                out = program(*args)
            except Exception as error:   # a file that passed every check but cannot run: drop it
                warnings.warn(f"{self._what}: the saved compiled step {path.name} failed on its first call "
                              f"({type(error).__name__}: {error}); removed, compiling it again", stacklevel=4)
                path.unlink(missing_ok=True)
                target = target or path
                continue
            self._held.add(path)
            self._ready.insert(0, program)
            return True, out, path
        return False, None, target or path

    def path_for(self, args: tuple[Any, ...]) -> Path:
        """The file that holds (or will hold) the step compiled for ``args`` (named anew on each
        call: the objects the step closes over may have changed since the last one). A step with
        dynamic dims names its file without their sizes; should a saved program's guards reject
        some size, the program compiled for it goes to the next variant, ``<name>.1.pt2``, ..."""
        environment = _environment()
        if environment is None:   # caught by the caller: the step runs compiled but unsaved
            raise RuntimeError("torch's compiler settings cannot be read on this torch release")
        settings = (environment, inductor_options(args, self._training), self._dynamic)
        shapes = args if self._dynamic is None else self._dynamic.signature(args)
        return self._dir / f"{fingerprint(self._fn, settings)[:24]}-{fingerprint(shapes)[:16]}{_SUFFIX}"

    def _untrusted_folder(self) -> str | None:
        """Why the folder cannot hold this process's saved steps, or ``None``: it is created
        ``0700`` and must be the current user's and writable by nobody else, and the user's secret
        key must be readable."""
        reason = private_dir(self._dir)
        if reason is None:
            try:
                secret_key()
            except OSError as error:
                reason = f"no secret key to sign saved steps with: {error}"
        if reason is None:
            return None
        return f"{reason}; a folder of saved steps holds code, so only one private to the current user is used"

    def _run_unsaved(self, args: tuple[Any, ...], why: str) -> Any:
        """Compile the plain way from now on (:class:`CompileOnFirstCall`), run once, then warn."""
        plain = CompileOnFirstCall(self._fn, training=self._training, dynamic=self._dynamic)
        out = plain(*args)   # a bad input raises here, as it would without a cache
        warnings.warn(f"{self._what}: this step cannot be saved to compile_cache ({why}); it runs compiled "
                      f"but unsaved", stacklevel=4)
        self._fallback = plain
        return out

    def _load(self, path: Path) -> Any:
        """The program saved in ``path``, or None when there is no file, or (with a warning) when
        it is unreadable or stale; its guards are the caller's to check."""
        try:
            try:
                header, payload = _read(path)   # checked (owner, mode, HMAC) before anything is unpickled
            except FileNotFoundError:
                return None
            program = torch.compiler.load_compiled_function(
                io.BytesIO(payload), f_globals=self._fn.__globals__, external_data=self._externals)
            changed = _changed_sources(program)
            if changed:
                raise ValueError(f"the source of {changed} changed since it was saved")
            values = _module_values(program)
            for module, saved in header["module_values"].items():
                if values.get(module) != saved:
                    raise ValueError(f"a module-level name of {module} is bound to another value than when "
                                     f"it was saved")
        except Exception as error:   # any unreadable or stale file: compile again, never fail on a cache
            warnings.warn(f"{self._what}: not using the saved compiled step {path} "
                          f"({type(error).__name__}: {error}); compiling it again", stacklevel=5)
            return None
        return program

    def _compile(self, path: Path, args: tuple[Any, ...]) -> tuple[Any, str]:
        """The step compiled ahead of time for ``args`` and saved to ``path``, or ``(None, why)``
        when torch cannot capture it that way."""
        _torch.forget_module_sources()   # a module edited since is saved as it reads now
        try:
            with keep_functions_whole():
                # Static shapes and values but the marked dims: one file per input signature, and
                # no restart of the analysis for values an earlier compile of the same code saw
                # change (aot_compile cannot restart: "TensorifyScalarRestartAnalysis").
                static = self._dynamic is None
                example = args if static else self._dynamic.marked(args)
                # A second compile of one code object in a process ignores the marks (its sizes
                # come out static), so each variant of a dynamic step compiles from a new copy.
                fn = self._fn if static else with_own_code(self._fn)
                program = torch.compile(fn, fullgraph=True, dynamic=False if static else None,
                                        options=inductor_options(args, self._training)).aot_compile((example, {}))
        except Exception as error:   # also a bad input: the caller's plain compile raises that
            return None, f"{type(error).__name__}: {error}"
        try:
            payload = type(program).serialize(program, self._externals).serialized_data
            _write(path, {"module_values": _module_values(program)}, payload)
        except Exception as error:   # the compiled step is still good; only the saving failed
            warnings.warn(f"{self._what}: could not save the compiled step to {path} "
                          f"({type(error).__name__}: {error})", stacklevel=4)
        return program, ""


def _variants(first: Path) -> list[Path]:
    """``first`` and the names of its variants, ``<name>.1.pt2`` ... ``<name>.7.pt2``."""
    stem = first.name[:-len(_SUFFIX)]
    return [first] + [first.with_name(f"{stem}.{i}{_SUFFIX}") for i in range(1, _VARIANTS)]


def _write(path: Path, header: dict[str, Any], payload: bytes) -> None:
    """Write the format line, the HMAC line (over the format, header and payload) and the rest,
    mode ``0600``."""
    body = json.dumps(header, sort_keys=True).encode() + b"\n" + payload
    mac = hmac_sha256(_MAGIC, body).hex().encode()
    write_private(path, _MAGIC + mac + b"\n" + body)


def _read(path: Path) -> tuple[dict[str, Any], bytes]:
    """``(header, payload)`` of a saved step whose file and folder pass the owner and mode checks
    and whose HMAC matches; nothing in it is parsed before. Raises ``FileNotFoundError``,
    ``UntrustedFileError`` (a check failed) or ``ValueError`` (another format)."""
    data = read_trusted(path)
    if not data.startswith(_MAGIC):
        raise ValueError(f"not a deepfn compiled step of this format (expected a file starting {_MAGIC!r})")
    start = len(_MAGIC) + _MAC_HEX + 1
    mac = data[len(_MAGIC):start]
    if not hmac.compare_digest(mac, hmac_sha256(_MAGIC, memoryview(data)[start:]).hex().encode() + b"\n"):
        raise UntrustedFileError(f"{path}'s HMAC does not match: it was not written by deepfn for the current user, "
                                 f"or was changed since")
    end = data.index(b"\n", start)
    return json.loads(data[start:end]), data[end + 1:]


def _module_values(program: Any) -> dict[str, str]:
    """``{module: fingerprint of its module-level names}`` for the modules ``program`` traced,
    torch's own left out (its state is torch's business and is in the version check)."""
    out = {}
    for name in sorted({source.module for source in program.source_info().inlined_sources}):
        if name == "torch" or name.startswith("torch."):
            continue
        module = sys.modules.get(name)
        if module is None:
            out[name] = "not imported"
            continue
        bound = _names_bound_by_source(module)
        values = sorted((k, v) for k, v in vars(module).items()
                        if not k.startswith("__") and _counts(v) and (bound is None or k in bound))
        out[name] = fingerprint(values)
    return out


def _names_bound_by_source(module: types.ModuleType) -> set[str] | None:
    """The names that ``module``'s own top-level code binds (imports, ``def``, ``class``,
    assignments, also inside top-level ``if``/``try``), or None when its source cannot be read.

    Dynamo installs values of its own into the globals of the module whose function it traces
    (e.g. a constant it read, named after the function that returned it), so that a process
    which has compiled a step holds names that a fresh process does not: those must not make
    a saved step look stale."""
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError, SyntaxError):
        return None
    names: set[str] = set()
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            pending.extend(getattr(node, "body", []) + getattr(node, "orelse", []) + getattr(node, "finalbody", []))
            pending.extend(stmt for handler in getattr(node, "handlers", []) for stmt in handler.body)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def _counts(value: Any) -> bool:
    """A module-level value that a traced step may have baked in: a constant (number, string,
    flag, ``None``, dtype, device, enum), a tensor (its metadata), a function or class, or a
    dataclass or tuple of such. Not modules, containers that fill as code runs (registries,
    caches) or other objects, whose internal state may change with every call (torch's op
    objects do)."""
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, functools.partial, type, torch.Tensor,
                          torch.dtype, torch.device, enum.Enum)):
        return True
    if type(value) in SCALAR_TYPES:
        return True
    if isinstance(value, (tuple, frozenset)):
        return all(_counts(v) for v in value)
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def closure_objects(fn: Callable) -> dict[str, Any]:
    """The objects ``fn``'s nested functions close over, by path (``"fn.update.optimizer"``).

    Saved files refer to these by name instead of holding copies, and a loaded step binds
    them to the current process's objects (the same model and optimizer settings, as the
    file's name guarantees; their tensors are read at run time).
    """
    out: dict[str, Any] = {}
    _collect(fn, "fn", out, set())
    return out


def _collect(fn: types.FunctionType, prefix: str, out: dict[str, Any], seen: set[int]) -> None:
    seen.add(id(fn))   # a local function may close over itself (recursion)
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True):
        try:
            value = cell.cell_contents
        except ValueError:   # a name the enclosing function never bound
            continue
        path = f"{prefix}.{name}"
        if isinstance(value, types.FunctionType) and "<locals>" in value.__qualname__:
            if id(value) not in seen:
                _collect(value, path, out, seen)   # saved as code: its closure by reference in turn
        elif type(value) not in SCALAR_TYPES:
            out[path] = value


def _environment() -> tuple[Any, ...] | None:
    """What else decides the compiled code: versions, the CPU's instruction set, global modes and
    the compilers' settings; ``None`` when torch's settings cannot be read (then nothing is saved
    or loaded)."""
    settings = _torch.compiler_settings()
    if settings is None:
        return None
    configs, vec_isa = settings
    autocast = tuple((d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in ("cpu", "cuda"))
    # The CPU's vector instructions shape Inductor's C++ (an AVX-512 loop steps 16 floats, an
    # AVX2 one 8), and torch's own check of a saved file compares GPUs only.
    isa = (vec_isa, torch.backends.cpu.get_cpu_capability(), os.environ.get("ATEN_CPU_CAPABILITY"))
    return (sys.version, torch.__version__, isa, torch.get_default_dtype(), torch.get_default_device(),
            torch.is_grad_enabled(), autocast, torch.are_deterministic_algorithms_enabled(),
            torch.get_float32_matmul_precision(), configs)


def _changed_sources(program: Any) -> str | None:
    """The first traced module whose source differs from the one saved with ``program``, or None."""
    for source in sorted(program.source_info().inlined_sources, key=lambda s: s.module):
        try:
            current = inspect.getsource(importlib.import_module(source.module))
        except (ImportError, OSError, TypeError):
            return source.module
        if current != source.content:
            return source.module
    return None

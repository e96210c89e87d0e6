"""Compiled steps saved to disk, so that a later process starts without tracing the step again
(``compile_cache=directory`` of ``make_train_step``, ``make_eval_step`` and
``make_ensemble_train_step``).

Why: Inductor's on-disk cache spares a new process the C++ compile, but Dynamo still traces
the whole step's Python again (a grad transform, the model, the optimizer over every
parameter): 13.8 s for the first call of the 3+3-layer Transformer step on a 2-core CPU,
against 1.7 s to load the saved step and run it once. ``torch.compile(fn).aot_compile``
captures the traced program, its guards and Inductor's code in one file; this module decides
when such a file may be used.

A file is used only when all of this matches the current process, else the step is compiled
again and the file replaced (with a warning when the file was unreadable or stale):

- its name: a :func:`~deepfn._fingerprint.fingerprint` of the step function's closure (the
  model's structure and hyper-parameters, the loss, the optimizer and its settings, every
  function's bytecode), of the inputs' structure, dtypes, shapes and devices, of the
  versions of Python and torch, of global modes (grad, autocast, default dtype and device,
  deterministic algorithms, matmul precision) and of the Dynamo, Inductor and functorch
  settings;
- torch's own compatibility check of the saved file (torch version, device);
- the source of every module whose code was traced, compared in full with the source saved
  in the file (a module-level constant edited in a script invalidates it);
- the guards Dynamo kept for the inputs.

Not covered: a module's global variable reassigned at run time (a compiled step reads
globals when it is traced, and a saved one keeps the values of that time).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from .._fingerprint import fingerprint

_SUFFIX = ".pt2"


class SavedCompile:
    """``run(*args)``: ``fn`` compiled as one graph (``torch.compile(fn, fullgraph=True)``),
    each input signature's compiled program saved in ``directory`` and loaded from there by
    later processes.

    ``what`` names the caller in messages. Files that cannot be read, or that describe other
    code or settings, are compiled again and replaced; a step that cannot be saved (an
    object torch cannot serialize in the step's closure) runs as a plain ``torch.compile``d
    function, with a warning.
    """

    def __init__(self, fn: Callable, directory: str | os.PathLike, what: str) -> None:
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"{what}: compile_cache must be a directory path (str or os.PathLike); "
                            f"got {type(directory).__name__}")
        self._fn = fn
        self._dir = Path(directory)
        self._what = what
        self._externals = closure_objects(fn)
        self._config: str | None = None   # the closure's fingerprint, taken at the first call
        self._ready: list[Any] = []   # loaded or compiled programs, each checked by its guards
        self._fallback: Callable | None = None

    def __call__(self, *args: Any) -> Any:
        for program in self._ready:
            if program.guard_check(*args):
                return program(*args)
        if self._fallback is not None:
            return self._fallback(*args)
        program = self._load(args)
        if program is None:
            program, unsaved = self._compile(args)
            if program is None:   # torch cannot save this step: compile it the plain way
                plain = torch.compile(self._fn, fullgraph=True)
                out = plain(*args)   # a bad input raises here, as it would without a cache
                warnings.warn(f"{self._what}: this step cannot be saved to compile_cache ({unsaved}); "
                              f"it runs compiled but unsaved", stacklevel=3)
                self._fallback = plain
                return out
        program.disable_guard_check()   # checked above on every call
        self._ready.append(program)
        return program(*args)

    def path_for(self, args: tuple[Any, ...]) -> Path:
        """The file that holds (or will hold) the step compiled for ``args``."""
        if self._config is None:
            self._config = fingerprint(self._fn, _environment())
        return self._dir / f"{self._config[:24]}-{fingerprint(args)[:16]}{_SUFFIX}"

    def _load(self, args: tuple[Any, ...]) -> Any:
        path = self.path_for(args)
        if not path.exists():
            return None
        try:
            with path.open("rb") as f:
                program = torch.compiler.load_compiled_function(
                    f, f_globals=self._fn.__globals__, external_data=self._externals)
            changed = _changed_sources(program)
            if changed:
                raise ValueError(f"the source of {changed} changed since it was saved")
            if not program.guard_check(*args):
                raise ValueError("its guards reject these inputs")
        except Exception as error:   # any unreadable or stale file: compile again, never fail on a cache
            warnings.warn(f"{self._what}: not using the saved compiled step {path.name} "
                          f"({type(error).__name__}: {error}); compiling it again", stacklevel=3)
            return None
        return program

    def _compile(self, args: tuple[Any, ...]) -> tuple[Any, str]:
        """The step compiled ahead of time for ``args`` and saved, or ``(None, why)`` when
        torch cannot capture it that way."""
        path = self.path_for(args)
        try:
            with _functions_keep_their_attributes():
                program = torch.compile(self._fn, fullgraph=True).aot_compile((args, {}))
        except Exception as error:   # also a bad input: the caller's plain compile raises that
            return None, f"{type(error).__name__}: {error}"
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            # torch writes a temporary file and renames it: a crash leaves the old file or none.
            program.save_compiled_function(str(path), external_data=self._externals)
        except Exception as error:   # the compiled step is still good; only the saving failed
            warnings.warn(f"{self._what}: could not save the compiled step to {path} "
                          f"({type(error).__name__}: {error})", stacklevel=4)
        return program, ""


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
        elif not isinstance(value, (bool, int, float, str, type(None))):
            out[path] = value


def _environment() -> tuple[Any, ...]:
    """What else decides the compiled code: versions, global modes and the compilers' settings."""
    import torch._dynamo.config
    import torch._functorch.config
    import torch._inductor.config

    configs = tuple(sorted(m.save_config_portable().items()) for m in
                    (torch._dynamo.config, torch._inductor.config, torch._functorch.config))
    autocast = tuple((d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in ("cpu", "cuda"))
    return (sys.version, torch.__version__, torch.get_default_dtype(), torch.get_default_device(),
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


@contextlib.contextmanager
def _functions_keep_their_attributes() -> Iterator[None]:
    """While compiling for a save: Dynamo's guard inputs keep nested functions whole (see
    :mod:`deepfn.train._guard_pickling`)."""
    import torch._dynamo.guards as guards

    from ._guard_pickling import WholeFunctionPickler

    with mock.patch.object(guards, "GuardsStatePickler", WholeFunctionPickler):
        yield

"""A step compiled as one graph: saved in a folder (:mod:`deepfn.train.compile.saved`) or the
plain way (:mod:`deepfn.train.compile.first_call`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .dynamic import DynamicDims
from .first_call import CompileOnFirstCall
from .own_code import with_own_code
from .saved import SavedCompile

__all__ = ["compiled", "no_programs", "require_compiled"]


def no_programs() -> int:
    """``compiled_programs()`` of an uncompiled step: it compiles nothing."""
    return 0


def require_compiled(where: str, compile_cache: str | os.PathLike | None, compile: Any,
                     modes: str = "compile=True") -> None:
    """Raise ``ValueError`` when a ``compile_cache`` is given for a step that is not compiled."""
    if compile_cache is not None and not compile:
        raise ValueError(f"{where}: compile_cache saves compiled steps: it needs {modes}; got compile=False")


def compiled(fn: Callable, compile_cache: str | os.PathLike | None, what: str, *, training: bool = True,
             dynamic: DynamicDims | None = None) -> Callable:
    """``fn`` compiled as one graph: saved in and loaded from ``compile_cache`` when it is a
    directory (:class:`SavedCompile`), else a plain ``torch.compile(fn, fullgraph=True)``
    (made on the first call, with :func:`inductor_options` for its inputs; ``training``: whether
    ``fn`` differentiates, which decides the layout setting; ``dynamic``: the batch dims compiled
    as symbols, the batch passed contiguous, :mod:`deepfn.train.compile.dynamic`).

    The result's ``compiled_programs()`` counts the programs it has compiled or loaded so far
    (None: unknown). ``fn`` is compiled as a copy with its own code object (:func:`deepfn.train.compile.own_code.with_own_code`):
    any number of steps, of any structures, compile in one process."""
    fn = with_own_code(fn)
    if compile_cache is None:
        run = CompileOnFirstCall(fn, training=training, dynamic=dynamic)
    else:
        run = SavedCompile(fn, compile_cache, what, training=training, dynamic=dynamic)
    if dynamic is None:
        return run

    def run_contiguous(*args: Any) -> Any:   # one stride pattern for every size: no compile per layout
        return run(*dynamic.contiguous(args))
    run_contiguous.compiled_programs = run.compiled_programs
    return run_contiguous

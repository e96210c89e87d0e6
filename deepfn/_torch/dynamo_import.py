"""Run deepfn's settings for Dynamo when Dynamo is imported, not when deepfn is.

Importing ``torch._dynamo`` takes about 2 s of CPU; the public calls that tell it about deepfn's
functions (``torch.compiler.allow_in_graph``, ``torch.compiler.assume_constant_result``) import
it. Made at import, they charged every process that imports deepfn (eager scripts, test and
``torchrun`` workers), compiling or not. :func:`on_dynamo_import` defers each such call to the
moment anything (deepfn's compiled steps, a user's ``torch.compile``) first imports Dynamo,
through a finder on ``sys.meta_path`` (Python's public import protocol), so every compile still
sees them, as before.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

DYNAMO = "torch._dynamo"


class _DynamoFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: hands back the spec Python's own finder makes for Dynamo, its
    (fresh, unshared) loader set to run the callbacks once the module has run."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], Any]] = []

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != DYNAMO:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run_module(module)
            self.run()

        spec.loader.exec_module = exec_module
        return spec

    def run(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        while self.callbacks:
            _call(self.callbacks.pop(0))


def _call(callback: Callable[[], Any]) -> None:
    try:
        callback()
    except Exception as error:   # a setting that only speeds tracing must never break an import
        warnings.warn(f"deepfn: {getattr(callback, '__qualname__', callback)!r} failed when Dynamo was "
                      f"imported ({type(error).__name__}: {error}); compiled code is the same, tracing "
                      f"may be slower", RuntimeWarning, stacklevel=2)


_FINDER = _DynamoFinder()


def on_dynamo_import(callback: Callable[[], Any]) -> None:
    """Call ``callback()`` now if ``torch._dynamo`` is imported, else right after it is."""
    if DYNAMO in sys.modules:
        _call(callback)
        return
    _FINDER.callbacks.append(callback)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)

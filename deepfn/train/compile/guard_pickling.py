"""Dynamo's saved guard inputs keep a nested function whole, when a step is compiled for
``compile_cache`` (imported only then: the pickler is Dynamo's, reached through
:mod:`deepfn._torch`).

torch 2.14.1 saves the objects its guards read, and rebuilds a nested function from its code,
positional defaults and closure only: a guard on a keyword-only default (every
``deepfn.optim`` update has some) or on a function attribute then cannot be rebuilt when the
file is loaded ("'NoneType' object is not subscriptable"). :func:`keep_functions_whole` also
saves ``__kwdefaults__`` and the function's attributes. :func:`rebuild_function` lives at
module level because the saved file names it to unpickle.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import sys
import types
from typing import Any

from ..._torch import guard_pickler_class, guard_pickler_patched

__all__ = ["keep_functions_whole", "reduce_nested_function", "rebuild_function"]   # and WholeFunctionPickler, made on first use (__getattr__)


def reduce_nested_function(obj: Any) -> Any:
    """How to save ``obj`` when it is a nested function: :func:`rebuild_function` with all its
    parts; ``NotImplemented`` for anything else (Dynamo's own rule)."""
    if inspect.isfunction(obj) and "<locals>" in obj.__qualname__:
        return rebuild_function, (obj.__code__, obj.__module__, obj.__qualname__, obj.__defaults__,
                                  obj.__kwdefaults__, obj.__closure__, dict(obj.__dict__))
    return NotImplemented


def keep_functions_whole() -> contextlib.AbstractContextManager[bool]:
    """While inside, Dynamo saves nested functions with :func:`reduce_nested_function`; yields
    False (Dynamo's own pickler: such a step is compiled again instead of loaded) when the
    hook is off."""
    # An attribute read: made once by __getattr__, then found in the module.
    return guard_pickler_patched(sys.modules[__name__].WholeFunctionPickler)


def rebuild_function(code: types.CodeType, module: str, qualname: str, defaults: tuple | None,
                     kwdefaults: dict | None, closure: tuple | None, attributes: dict) -> types.FunctionType:
    f = types.FunctionType(code, importlib.import_module(module).__dict__, qualname, defaults, closure)
    f.__kwdefaults__ = kwdefaults
    f.__dict__.update(attributes)
    return f


def __getattr__(name: str) -> Any:
    """``WholeFunctionPickler``, the pickler class (None with the hook off), made on first use:
    a module attribute because saved files name it, made lazily because making it imports
    Dynamo (seconds), which a process that never compiles should not pay."""
    if name != "WholeFunctionPickler":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = guard_pickler_class(reduce_nested_function, __name__, name)
    globals()[name] = cls
    return cls

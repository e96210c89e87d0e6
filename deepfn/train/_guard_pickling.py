"""A pickler for Dynamo's saved guard inputs that keeps a nested function whole (imported only
when a step is compiled for ``compile_cache``: it imports ``torch._dynamo``).

torch 2.14.1 saves the objects its guards read, and rebuilds a nested function from its code,
positional defaults and closure only: a guard on a keyword-only default (every
``deepfn.optim`` update has some) or on a function attribute then cannot be rebuilt when the
file is loaded ("'NoneType' object is not subscriptable"). This subclass also saves
``__kwdefaults__`` and the function's attributes. It lives at module level because the saved
file names its class to unpickle.
"""

from __future__ import annotations

import importlib
import inspect
import types
from typing import Any

from torch._dynamo.guards import GuardsStatePickler


class WholeFunctionPickler(GuardsStatePickler):
    def reducer_override(self, obj: Any) -> Any:
        if inspect.isfunction(obj) and "<locals>" in obj.__qualname__:
            return rebuild_function, (obj.__code__, obj.__module__, obj.__qualname__, obj.__defaults__,
                                      obj.__kwdefaults__, obj.__closure__, dict(obj.__dict__))
        return super().reducer_override(obj)


def rebuild_function(code: types.CodeType, module: str, qualname: str, defaults: tuple | None,
                     kwdefaults: dict | None, closure: tuple | None, attributes: dict) -> types.FunctionType:
    f = types.FunctionType(code, importlib.import_module(module).__dict__, qualname, defaults, closure)
    f.__kwdefaults__ = kwdefaults
    f.__dict__.update(attributes)
    return f

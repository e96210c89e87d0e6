"""A stable hash of what a Python object graph computes: the key under which a compiled step
is saved (``compile_cache`` of :mod:`deepfn.train`; :mod:`deepfn.train.compile.saved`).

Two graphs hash alike when they hold the same values (numbers, strings, dtypes), the same
functions (module, name and bytecode, defaults, closure contents, attributes), the same
object types with the same attributes, and tensors of the same dtype, shape, strides, device
and ``requires_grad``. Tensor *values* are left out on purpose: a compiled graph reads them at
run time. The hash is the same in every process (no ``id``s, no addresses, no ``marshal``,
whose output depends on reference counts).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import types
import weakref
from typing import Any

import torch

__all__ = ["fingerprint", "SCALAR_TYPES"]

SCALAR_TYPES = (bool, int, float, complex, str, bytes, type(None))
_BY_REPR = (torch.dtype, torch.device, torch.layout, torch.memory_format, enum.Enum, range, slice)


def fingerprint(*objects: Any) -> str:
    """The hex SHA-256 of ``objects`` (see the module docstring for what counts)."""
    walker = _Walker()
    for x in objects:
        walker.feed(x)
    return walker.hexdigest()


class _Walker:
    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._seen: dict[int, int] = {}
        self._alive: list[Any] = []   # keeps each visited object, so no id is reused mid-walk

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def _put(self, *parts: Any) -> None:
        self._hash.update(("\x1f".join(map(str, parts)) + "\x1e").encode())

    def feed(self, x: Any) -> None:
        if type(x) in SCALAR_TYPES or isinstance(x, _BY_REPR):
            self._put(type(x).__qualname__, repr(x))
            return
        if id(x) in self._seen:   # shared or cyclic: a back reference
            self._put("ref", self._seen[id(x)])
            return
        self._seen[id(x)] = len(self._seen)
        self._alive.append(x)
        if isinstance(x, torch.Tensor):
            self._put("tensor", type(x).__qualname__, x.dtype, tuple(x.shape), x.stride(), x.device,
                      x.requires_grad)
        elif isinstance(x, types.FunctionType):
            self._function(x)
        elif isinstance(x, types.CodeType):
            self._code(x)
        elif isinstance(x, types.MethodType):
            self._put("method")
            self.feed(x.__func__)
            self.feed(x.__self__)
        elif isinstance(x, functools.partial):
            self._put("partial", type(x).__module__, type(x).__qualname__)
            self.feed(x.func)
            self.feed(x.args)
            self.feed(x.keywords)
            self.feed(dict(getattr(x, "__dict__", {})))
        elif isinstance(x, types.BuiltinFunctionType):   # a C function, or a C method bound to an object
            self._put("builtin", getattr(x, "__module__", ""), x.__qualname__)
            owner = getattr(x, "__self__", None)
            if owner is not None and not isinstance(owner, types.ModuleType):
                self.feed(owner)
        elif isinstance(x, type):
            self._put("type", x.__module__, x.__qualname__)
            if "<locals>" in x.__qualname__:   # same-named local classes may differ: their attributes
                self.feed({k: v for k, v in vars(x).items() if not k.startswith("__")})
        elif isinstance(x, types.ModuleType):
            self._put("module", x.__name__)
        elif isinstance(x, weakref.ref):
            self._put("weakref")
            self.feed(x())
        elif _is_array(x):   # numpy's repr elides the middle of large arrays
            self._put("array", type(x).__qualname__, x.dtype, x.shape)
            self._hash.update(x.tobytes())
        elif isinstance(x, types.CellType):
            self._put("cell")
            self.feed(x.cell_contents if _filled(x) else None)
        elif isinstance(x, dict):
            self._put("dict", type(x).__qualname__, len(x))
            for k, v in x.items():
                self.feed(k)
                self.feed(v)
        elif isinstance(x, (list, tuple)):
            self._put("seq", type(x).__module__, type(x).__qualname__, len(x))
            for v in x:
                self.feed(v)
        elif isinstance(x, (set, frozenset)):
            self._put("set", type(x).__qualname__, sorted(map(fingerprint, x)))
        else:
            self._object(x)

    def _function(self, f: types.FunctionType) -> None:
        self._put("function", f.__module__, f.__qualname__)
        self._code(f.__code__)
        self.feed(f.__defaults__)
        self.feed(f.__kwdefaults__)
        self.feed(tuple(f.__closure__ or ()))
        self.feed(dict(f.__dict__))   # attributes (deepfn.optim marks updates this way)

    def _code(self, c: types.CodeType) -> None:
        self._put("code", c.co_qualname, c.co_code.hex(), c.co_names, c.co_varnames, c.co_freevars,
                  c.co_cellvars, c.co_flags, c.co_argcount, c.co_kwonlyargcount)
        for const in c.co_consts:
            self.feed(const)

    def _object(self, x: Any) -> None:
        cls = type(x)
        self._put("object", cls.__module__, cls.__qualname__)
        state = dict(getattr(x, "__dict__", {}))
        for klass in cls.__mro__:
            for slot in getattr(klass, "__slots__", ()):
                if slot not in ("__dict__", "__weakref__") and hasattr(x, slot):
                    state[slot] = getattr(x, slot)
        if state:
            self.feed(state)
        elif cls.__repr__ is not object.__repr__:   # a value without attributes (a C type): its repr
            text = repr(x)
            self._put("repr", text if " at 0x" not in text else "")


def _is_array(x: Any) -> bool:
    return all(hasattr(x, a) for a in ("dtype", "shape", "tobytes", "__array__"))


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:   # an empty cell (a name not yet bound)
        return False
    return True

"""Which of Dynamo's guards a compiled step keeps: none on torch's and deepfn's own globals.

Why: Dynamo checks every guard on every call, and most of a step's guards are on library
globals its trace read (``torch.func.grad``'s helpers, the optimizer's and the tree walks'
functions, module aliases, dtype constants: ~1,500 of the ~2,000 guard entries of the mlp-seed
step, whose check was a quarter of a call and a third of that without them; figures in the
documentation's benchmarks page). Those globals change only when
someone patches torch or deepfn at run time, so a step keeps the library code it was traced
with, as ``jax.jit`` keeps the functions it traced. Kept: every guard on the step's inputs and
closure (shapes, dtypes, structure, the model's and optimizer's settings), on global state
(grad mode, autocast, threads, default dtype and device), on ``torch.backends`` flags, and on
the globals of every other module the trace read (the user's loss or layers: ``SCALE = 2.0``
reassigned at run time still compiles the step again).

Fail-safe: a guard's name is text that Dynamo formats (``G['__import_torch_dot_nn'].functional``,
``dict(G['...'].Cls.__dict__)['__new__']``). A guard is dropped only when its whole name parses
as one of the known forms and its root is certainly torch's or deepfn's: an imported module
whose decoded name is loaded, is torch or deepfn, and cannot be read as any other loaded
module; a builtin; or a global of the compiled function's own module when that is deepfn's.
Any other name, any unknown form, an entry without the expected fields, or a torch release
other than the tested one (:mod:`deepfn._torch`): the guard is kept.
"""

from __future__ import annotations

import itertools
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..._torch import hook_on, turn_off

__all__ = ["library_globals_unguarded"]

_LIBRARIES = ("torch", "deepfn")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_STEP = rf"(?:\.{_IDENT}|\['[^'\\]*'\]|\[\d+\])"
# The forms a global guard's name takes (Dynamo 2.14): an access chain from a global, or a
# class's __dict__ read through dict(...).
_FORMS = (re.compile(rf"G\['(?P<root>{_IDENT})'\]{_STEP}*"),
          re.compile(rf"dict\(G\['(?P<root>{_IDENT})'\]{_STEP}*\.__dict__\){_STEP}*"))
_IMPORTED = "__import_"
_BUILTINS = re.compile(r"__builtins_dict___\d+")
_MAX_DOTS = 8   # decodings of a module name to rule out (2**n): beyond this, keep the guard


def _is_library(module: str) -> bool:
    return any(module == lib or module.startswith(lib + ".") for lib in _LIBRARIES)


def _imported_library(mangled: str) -> bool:
    """Whether ``mangled`` (``torch_dot__functorch``: dots written ``_dot_``) certainly names a
    loaded torch or deepfn module: its every reading as a loaded module is torch's or deepfn's."""
    parts = mangled.split("_dot_")
    if len(parts) - 1 > _MAX_DOTS:
        return False
    readings = []
    for joins in itertools.product((".", "_dot_"), repeat=len(parts) - 1):
        name = parts[0] + "".join(j + p for j, p in zip(joins, parts[1:], strict=True))
        if name in sys.modules:
            readings.append(name)
    return bool(readings) and all(_is_library(name) for name in readings)


def _library_global(name: str, root_is_library: bool) -> bool:
    """Whether the guarded global source ``name`` is certainly torch's or deepfn's."""
    if ".backends" in name:   # user-settable switches (cudnn.enabled, ...) stay guarded
        return False
    match = next((m for m in (form.fullmatch(name) for form in _FORMS) if m is not None), None)
    if match is None:         # a form not known: keep
        return False
    root = match.group("root")
    if root.startswith(_IMPORTED):   # a module the trace reached: __import_torch_dot__functorch
        return _imported_library(root[len(_IMPORTED):])
    if _BUILTINS.fullmatch(root):
        return True
    if root.startswith("__"):        # Dynamo's own scopes (closures of generated functions), dunders
        return False
    return root_is_library           # a global of the compiled function's own module


def _keep_all(entries: Sequence[Any]) -> list[bool]:
    return [True] * len(entries)


def library_globals_unguarded(fn: Callable[..., Any]) -> Callable[[Sequence[Any]], list[bool]]:
    """A ``guard_filter_fn`` for ``torch.compile(fn, options=...)``: keep every guard but those
    certainly on torch's and deepfn's globals (``fn``'s own module's globals count as deepfn's
    when ``fn`` is defined in deepfn). Keeps every guard when the hook is off."""
    if not hook_on("guard_filter"):
        return _keep_all
    root_is_library = _is_library(getattr(fn, "__module__", None) or "")

    def keep(entries: Sequence[Any]) -> list[bool]:
        if not hook_on("guard_filter"):
            return _keep_all(entries)
        try:
            return [not (e.is_global is True and isinstance(e.name, str)
                         and _library_global(e.name, root_is_library)) for e in entries]
        except AttributeError as error:   # entries of another shape: keep them all from now on
            turn_off("guard_filter", error)
            return _keep_all(entries)

    return keep

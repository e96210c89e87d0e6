"""Which of Dynamo's guards a compiled step keeps: none on torch's and deepfn's own globals.

Why: Dynamo checks every guard on every call, and most of a step's guards are on library
globals its trace read (``torch.func.grad``'s helpers, the optimizer's and the tree walks'
functions, module aliases, dtype constants: ~1,500 of the ~2,000 guard entries of the mlp-seed
step, whose check took 116-182 us of a ~500-650 us call; 37-68 us without them, torch.profiler's
"TorchDynamo Cache Lookup", two runs each). Those globals change only when
someone patches torch or deepfn at run time, so a step keeps the library code it was traced
with, as ``jax.jit`` keeps the functions it traced. Kept: every guard on the step's inputs and
closure (shapes, dtypes, structure, the model's and optimizer's settings), on global state
(grad mode, autocast, threads, default dtype and device), on ``torch.backends`` flags, and on
the globals of every other module the trace read (the user's loss or layers: ``SCALE = 2.0``
reassigned at run time still compiles the step again).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

_ROOT = re.compile(r"G\['([^']+)'\]")
_LIBRARIES = ("torch", "deepfn")
_IMPORTED = "__import_"


def _is_library(module: str) -> bool:
    return any(module == lib or module.startswith(lib + ".") for lib in _LIBRARIES)


def _library_global(name: str, root_is_library: bool) -> bool:
    """Whether the guarded global source ``name`` (``G['x'].attr...``) is torch's or deepfn's."""
    if ".backends." in name:   # user-settable switches (cudnn.enabled, ...) stay guarded
        return False
    match = _ROOT.search(name)   # also inside wrappers: dict(G['x'].Class.__dict__)
    if match is None:
        return False
    root = match.group(1)
    if root.startswith(_IMPORTED):   # a module the trace reached: __import_torch_dot__functorch
        return _is_library(root[len(_IMPORTED):].replace("_dot_", "."))
    if root.startswith("__builtins_dict"):
        return True
    if root.startswith("___"):       # Dynamo's own scopes (closures of generated functions)
        return False
    return root_is_library           # a global of the compiled function's own module


def library_globals_unguarded(fn: Callable[..., Any]) -> Callable[[Sequence[Any]], list[bool]]:
    """A ``guard_filter_fn`` for ``torch.compile(fn, options=...)``: keep every guard but those
    on torch's and deepfn's globals (``fn``'s own module's globals count as deepfn's when
    ``fn`` is defined in deepfn)."""
    root_is_library = _is_library(getattr(fn, "__module__", None) or "")

    def keep(entries: Sequence[Any]) -> list[bool]:
        return [not (e.is_global and _library_global(e.name, root_is_library)) for e in entries]

    return keep

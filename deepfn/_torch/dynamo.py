"""Dynamo's internals that compiled steps rely on: marking a batch's dims dynamic, counting the
graphs Dynamo compiled; and for saved
compiles (``deepfn.train.compile.saved``) rely on: the
compilers' settings and the CPU's vector instructions (part of a saved file's name), torch's
per-process cache of module sources, and the pickler of Dynamo's saved guard state.

Each has a safe fallback: no settings (the caller then does not save or load compiled steps),
nothing to forget, the unpatched pickler (a step whose guard state cannot be saved compiles
again instead of loading), no marks (a step compiles once per size instead of once for all),
no count of compiles (a plain compiled step's history then holds no compile counts).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

from .gate import hook_on, turn_off


def compiler_settings() -> tuple[Any, ...] | None:
    """Dynamo's, Inductor's and AOTAutograd's portable settings and Inductor's vector ISA
    (``"avx512"``, ``"avx2"``, ...), or None when they cannot be read (hook off)."""
    if not hook_on("compiler_settings"):
        return None
    try:
        import torch._dynamo.config
        import torch._functorch.config
        import torch._inductor.config
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        configs = tuple(tuple(sorted(m.save_config_portable().items()))
                        for m in (torch._dynamo.config, torch._inductor.config, torch._functorch.config))
        return configs, str(pick_vec_isa())
    except Exception as error:
        turn_off("compiler_settings", error)
        return None


def forget_module_sources() -> None:
    """Drop the source of each module that torch read once per process for the files it saves,
    so a module edited and reloaded since is saved as it reads now."""
    if not hook_on("compiler_settings"):
        return
    try:
        from torch._dynamo import package
        clear = getattr(getattr(package, "_get_module_content", None), "cache_clear", None)
    except Exception as error:
        turn_off("compiler_settings", error)
        return
    if clear is not None:
        clear()


def guard_pickler_class(reduce: Callable[[Any], Any], module: str, name: str) -> type | None:
    """A subclass of Dynamo's guard-state pickler whose ``reducer_override`` asks ``reduce(obj)``
    first (``NotImplemented``: Dynamo's own rule), or None when the hook is off.

    Saved files name the class (Dynamo's rules rebuild objects through its class methods):
    bind the result to ``name`` at module level in ``module``, where a later process finds it.
    """
    if not hook_on("guard_pickler"):
        return None
    try:
        from torch._dynamo.guards import GuardsStatePickler

        class Pickler(GuardsStatePickler):
            def reducer_override(self, obj: Any) -> Any:
                out = reduce(obj)
                return super().reducer_override(obj) if out is NotImplemented else out

        Pickler.__module__, Pickler.__name__, Pickler.__qualname__ = module, name, name
        return Pickler
    except Exception as error:
        turn_off("guard_pickler", error)
        return None


@contextlib.contextmanager
def guard_pickler_patched(pickler: type | None) -> Iterator[bool]:
    """While inside: Dynamo saves guard state with ``pickler`` (from :func:`guard_pickler_class`).
    Yields whether the patch is in place (False for None or with the hook off: Dynamo's own)."""
    if pickler is None or not hook_on("guard_pickler"):
        yield False
        return
    import torch._dynamo.guards as guards

    with mock.patch.object(guards, "GuardsStatePickler", pickler):
        yield True



def mark_dynamic(tensor: Any, dims: tuple[int, ...]) -> bool:
    """Mark ``dims`` of ``tensor`` dynamic for the next compile that takes it as an input (its
    sizes symbolic, so one compiled program serves every size). False when the hook is off or
    the call failed: then nothing is marked and a step compiles once per size, the same numbers."""
    if not dims or not hook_on("mark_dynamic"):
        return False
    try:
        import torch._dynamo
        torch._dynamo.mark_dynamic(tensor, list(dims))
    except Exception as error:
        turn_off("mark_dynamic", error)
        return False
    return True


def graphs_compiled() -> int | None:
    """How many graphs Dynamo has compiled in this process so far (each compile and recompile of
    any function counts one), or None when the count cannot be read (hook off)."""
    if not hook_on("compile_count"):
        return None
    try:
        import torch._dynamo.utils
        return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    except Exception as error:
        turn_off("compile_count", error)
        return None

"""A function's copy with a code object of its own, for ``torch.compile``.

Dynamo keeps its compiled entries per code object, at most ``recompile_limit`` (8) of them,
and every closure made by one factory (each ``make_train_step``, each checked block) shares
its code object: the ninth train step of another structure in one process failed with
"recompile limit exceeded" under ``fullgraph=True``. A copy per compiled function gives each
one its own entries, freed with it.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

__all__ = ["with_own_code"]


def with_own_code(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` itself unless it is a plain Python function; else a copy with its own code object
    (same globals, defaults, closure cells, name and attributes)."""
    if not isinstance(fn, types.FunctionType):
        return fn
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    copy.__qualname__ = fn.__qualname__
    copy.__doc__ = fn.__doc__
    copy.__dict__.update(fn.__dict__)
    return copy

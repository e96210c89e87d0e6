"""A function's copy with a code object and a Dynamo profile of its own, for ``torch.compile``.

Dynamo keeps its compiled entries per code object, at most ``recompile_limit`` (8) of them,
and every closure made by one factory (each ``make_train_step``, each checked block) shares
its code object: the ninth train step of another structure in one process failed with
"recompile limit exceeded" under ``fullgraph=True``. A copy per compiled function gives each
one its own entries, freed with it.

Dynamo also keeps, for the whole process, which input sizes and values it has seen change
("automatic dynamic" shapes), keyed by the code's file, first line and name and its closure's
code objects, not by the code object itself. Copies that keep the name would share that
record: a step that saw two batch sizes made the next step of the same factory compile its
first call with symbolic sizes (batch, widths, dropout rate), other kernels than a fresh step's,
so its numbers depended on what the process had compiled before. Each copy gets its own name
(``step`` -> ``step__1``, ``step__2``, ...); the qualified name stays, so saved-step
fingerprints (:mod:`deepfn.train.compile.fingerprint`) do not change.
"""

from __future__ import annotations

import itertools
import types
from collections.abc import Callable
from typing import Any

__all__ = ["with_own_code"]

_COPIES = itertools.count(1)   # only names copies apart; no result depends on it


def with_own_code(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` itself unless it is a plain Python function; else a copy with its own code object,
    whose ``co_name`` is ``fn``'s plus a number unique in the process (same globals, defaults,
    closure cells, ``__name__``, ``__qualname__`` and attributes)."""
    if not isinstance(fn, types.FunctionType):
        return fn
    code = fn.__code__.replace(co_name=f"{fn.__code__.co_name}__{next(_COPIES)}")
    copy = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    copy.__qualname__ = fn.__qualname__
    copy.__doc__ = fn.__doc__
    copy.__dict__.update(fn.__dict__)
    return copy

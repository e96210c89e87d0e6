"""The allow-list of container types that :func:`deepfn.checkpoint.load` may rebuild.

A checkpoint names each NamedTuple or dataclass node by ``"module:qualname"``. Loading never
imports or calls such a name: it looks the name up here, among deepfn's own types (listed
explicitly below) and the types the user registered with :func:`register`. Any other name is
refused.
"""

from __future__ import annotations

import dataclasses
import functools

__all__ = ["register", "registered_type", "type_name", "is_namedtuple_class"]

# The user's registrations: the user's explicit act, never filled from a file.
_user_types: dict[str, type] = {}


def type_name(cls: type) -> str:
    """The name a checkpoint stores for ``cls``: ``"module:qualname"``."""
    return f"{cls.__module__}:{cls.__qualname__}"


def is_namedtuple_class(cls: type) -> bool:
    return isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")


def register(cls: type) -> type:
    """Allow :func:`deepfn.checkpoint.load` to rebuild instances of ``cls``.

    deepfn's own containers (``TrainState``, the loss scales, the optimizer states) are
    registered already; register your own NamedTuple or dataclass before loading a
    checkpoint that holds it without a ``like=`` template. Usable as a decorator.

    Args:
        cls: a NamedTuple class or a dataclass (not an instance). It is stored under
            ``"module:qualname"``; registering another class of the same name replaces
            the earlier one (e.g. a re-run notebook cell).

    Returns:
        ``cls`` itself.

    Raises:
        TypeError: ``cls`` is not a NamedTuple class or a dataclass, or is a dataclass with
            ``init=False`` fields (which cannot be rebuilt by calling it).

    Examples:
        >>> from typing import NamedTuple
        >>> import deepfn
        >>> @deepfn.checkpoint.register
        ... class Ema(NamedTuple):
        ...     decay: float
    """
    if not isinstance(cls, type):
        raise TypeError(f"deepfn.checkpoint.register: expected a NamedTuple class or a dataclass; "
                        f"got {type(cls).__name__} {cls!r}")
    if not (is_namedtuple_class(cls) or dataclasses.is_dataclass(cls)):
        raise TypeError(f"deepfn.checkpoint.register: expected a NamedTuple class or a dataclass; "
                        f"got the class {type_name(cls)}, which is neither")
    no_init = [f.name for f in dataclasses.fields(cls) if not f.init] if dataclasses.is_dataclass(cls) else []
    if no_init:
        raise TypeError(f"deepfn.checkpoint.register: {type_name(cls)} has fields that __init__ does not "
                        f"take ({no_init}); a checkpoint rebuilds a dataclass by calling it with every field")
    _user_types[type_name(cls)] = cls
    return cls


@functools.cache
def _deepfn_types() -> dict[str, type]:
    # Imported here, not at the top: deepfn.train imports deepfn.checkpoint. The list is
    # fixed; a test fails when deepfn.optim gains a state class that is missing from it.
    from ..amp.loss_scale import DynamicLossScale, NoOpLossScale
    from ..distributed.sharded_state import ShardedTrainState
    from ..optim.adam import ScaleByAdamState
    from ..optim.base import EmptyState
    from ..optim.transforms import ScaleByScheduleState, TraceState
    from ..train.state import TrainState

    own = (TrainState, ShardedTrainState, DynamicLossScale, NoOpLossScale, EmptyState, ScaleByAdamState,
           ScaleByScheduleState, TraceState)
    return {type_name(cls): cls for cls in own}


def registered_type(name: str) -> type | None:
    """The class stored under ``name`` (deepfn's own first), or ``None`` if it is not allowed."""
    return _deepfn_types().get(name) or _user_types.get(name)

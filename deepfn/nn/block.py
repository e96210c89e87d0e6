"""Helpers for composite blocks: one key per child, params/state trees that hold only
what children own (dropout and activations appear nowhere, like a ``state_dict``)."""

from __future__ import annotations

from collections.abc import Mapping

from .. import random
from ..typing import Block, Key, Params, State

__all__ = ["split_key", "init_children", "child_state", "merge_state"]


def split_key(key: Key | None, num: int) -> list[Key | None]:
    """``num`` keys from ``key``, or ``num`` ``None``s when ``key`` is ``None`` (as stax)."""
    if key is None:
        return [None] * num
    return list(random.split(key, num).unbind(0))


def init_children(children: Mapping[str, Block], key: Key) -> tuple[Params, State]:
    """Initialise each child from its own split of ``key``.

    Returns:
        ``(params, state)``: dicts keyed by child name, holding only children whose params
        (resp. state) are non-empty.
    """
    params: Params = {}
    state: State = {}
    keys = split_key(key, max(len(children), 1))
    for (name, child), k in zip(children.items(), keys, strict=False):
        p, s = child.init(k)
        if p:
            params[name] = p
        if s:
            state[name] = s
    return params, state


def child_state(state: State, name: str) -> State:
    return state.get(name, {})


def merge_state(state: State, updates: Mapping[str, State]) -> State:
    """A new state with the stateful children replaced; the input dict is not touched."""
    new = dict(state)
    for name, s in updates.items():
        if s:
            new[name] = s
    return new

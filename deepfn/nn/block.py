"""Helpers for composite blocks: one key per child, params/state trees that hold only
what children own (dropout and activations appear nowhere, like a ``state_dict``).

A composite lists its children by name, initialises them with :func:`init_children`, and in
``apply`` hands each stateful child its own part of the state (:func:`child_state`), then
gathers the children's new states into a new state (:func:`merge_state`). The guide
"Your own block" in the documentation builds one step by step.

Examples:
    >>> from deepfn import nn, random
    >>> children = {"fc": nn.Dense(3, 4), "norm": nn.BatchNorm(4)}
    >>> params, state = nn.init_children(children, random.key(0))
    >>> sorted(params), sorted(state)                    # Dense has no state
    (['fc', 'norm'], ['norm'])
    >>> sorted(nn.child_state(state, "norm")), nn.child_state(state, "fc")
    (['num_batches_tracked', 'running_mean', 'running_var'], {})
"""

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
    """The state of child ``name``: ``state[name]``, or ``{}`` for a stateless child.

    A parent's state holds only its stateful children, so a stateless child (``Dense``,
    ``Dropout``) has no entry; this gives it the empty state its ``apply`` expects.
    """
    return state.get(name, {})


def merge_state(state: State, updates: Mapping[str, State]) -> State:
    """A new state with the stateful children replaced; the input dict is not touched.

    Args:
        state: the parent's state, keyed by child name.
        updates: ``{name: new_child_state}`` from the children's ``apply``; empty states
            (stateless children) are skipped, so the result keeps only stateful children.

    Returns:
        A new dict; ``state`` itself is not mutated, which keeps ``apply`` pure.

    Examples:
        >>> merge_state({"norm": {"n": 0}}, {"norm": {"n": 1}, "fc": {}})
        {'norm': {'n': 1}}
    """
    new = dict(state)
    for name, s in updates.items():
        if s:
            new[name] = s
    return new

"""``check_block``: the properties every deepfn block promises (API §0, §3), checked on any
block that follows the ``init``/``apply`` protocol, a user's own included.

Examples:
    >>> import torch
    >>> from deepfn import nn
    >>> from deepfn.testing import check_block
    >>> check_block(nn.Dense(3, 2), torch.ones(4, 3), checks=["pure", "eval_state"])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .. import random, tree
from .._checks import describe
from .._torch import pytree
from ..train.compile.own_code import with_own_code
from ._report import compare_trees, guarded, owner_name

__all__ = ["CHECKS", "check_block"]

CHECKS = ("pure", "deterministic", "eval_state", "batch_independent", "vmap", "compile")
EVAL_ONLY = ("eval_state", "batch_independent")


def _clone(t: Any) -> Any:
    return pytree.tree_map(lambda x: x.detach().clone() if isinstance(x, torch.Tensor) else x, t)


def _version(x: torch.Tensor) -> int | None:
    try:
        return x._version
    except RuntimeError:  # inference tensors keep no version counter
        return None


def _rng_state(cuda: bool) -> list[torch.Tensor]:
    states = [torch.random.get_rng_state()]
    if cuda:
        states += torch.cuda.get_rng_state_all()
    return states


def _cuda_ready() -> bool:
    # Asking an uninitialised CUDA runtime for its state would initialise it: a side effect.
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _set_rng_state(states: list[torch.Tensor]) -> None:
    torch.random.set_rng_state(states[0])
    if len(states) > 1:
        torch.cuda.set_rng_state_all(states[1:])


def _select(checks: str | Iterable[str] | None, train: bool) -> list[str]:
    if checks is None:
        return [c for c in CHECKS if not (train and c in EVAL_ONLY)]
    names = [checks] if isinstance(checks, str) else list(checks)
    unknown = [c for c in names if c not in CHECKS]
    if unknown:
        raise ValueError(f"check_block: unknown check {unknown[0]!r}; valid checks are {list(CHECKS)}")
    clash = [c for c in names if train and c in EVAL_ONLY]
    if clash:
        raise ValueError(f"check_block: check {clash[0]!r} applies to train=False only; got train=True "
                         f"(drop it from checks, or call with train=False)")
    return [c for c in CHECKS if c in names]


def _batch_size(inputs: tuple[Any, ...]) -> int:
    """The common leading size of the tensor inputs; a leading size 1 broadcasts."""
    sizes = {x.shape[0] for x in tree.leaves(inputs) if isinstance(x, torch.Tensor) and x.ndim > 0}
    if not sizes:
        raise ValueError("check_block: batch_independent needs a tensor input with a leading batch axis; "
                         f"got {[describe(x) for x in inputs]}")
    if len(sizes - {1}) > 1:
        raise ValueError("check_block: batch_independent needs one batch size (leading axis) over all tensor "
                         f"inputs; got {[describe(x) for x in tree.leaves(inputs)]}")
    return max(sizes)


class _Run:
    """One checked call: the pristine inputs, params and state, and the reference result."""

    def __init__(self, block: Any, inputs: tuple[Any, ...], key: torch.Tensor, train: bool,
                 rtol: float, atol: float) -> None:
        self.block, self.train, self.rtol, self.atol, self.key = block, train, rtol, atol, key
        self.owner = owner_name(block, "apply")
        # A fixed, derived apply key: init and apply never consume the same key.
        self.apply_key = random.fold_in(key, 1) if train else None
        self.params, self.state = block.init(key)
        self.inputs = inputs
        self.pristine = _clone((inputs, self.params, self.state))
        given = pytree.tree_flatten_with_path((inputs, self.params, self.state))[0]
        self.versions = [(p, x, _version(x)) for p, x in given if isinstance(x, torch.Tensor)]
        cuda = _cuda_ready()
        self.rng_before = _rng_state(cuda)
        try:
            out = self.call(self.params, self.state, inputs)
        except Exception as err:
            err.add_note(f"check_block: raised by the reference call {self.owner}(params, state, *inputs, "
                         f"train={train}); fix this before the properties can be checked")
            raise
        self.rng_after = _rng_state(cuda)
        self.out, self.out_state = _clone(out)

    def call(self, params: Any, state: Any, inputs: tuple[Any, ...]) -> tuple[Any, Any]:
        result = self.block.apply(params, state, *inputs, key=self.apply_key, train=self.train)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError(f"check_block: {self.owner} must return (output, state); got {type(result).__name__}")
        return result

    def fresh(self) -> tuple[tuple[Any, ...], Any, Any]:
        """Copies of the untouched inputs, params and state, whatever earlier calls did to them."""
        return _clone(self.pristine)

    def compare(self, check: str, claim: str, actual: Any, expected: Any, label: str,
                exact: bool = False) -> None:
        rtol, atol = (0.0, 0.0) if exact else (self.rtol, self.atol)
        compare_trees(check, self.owner, claim, actual, expected, label=label, rtol=rtol, atol=atol)


def _pure(run: _Run) -> None:
    names = ("inputs", "params", "state")
    for name, now, before in zip(names, (run.inputs, run.params, run.state), run.pristine, strict=True):
        run.compare("pure", f"apply changed its {name} in place", now, before, label=name, exact=True)
    for path, x, version in run.versions:
        if version is not None and _version(x) != version:
            where = names[path[0].idx] + pytree.keystr(path[1:])
            raise AssertionError(
                f"pure: {run.owner}: apply wrote into {where} in place (version counter {version} -> "
                f"{_version(x)}) though its values are unchanged; largest difference 0 at {where}")
    for i, (before, after) in enumerate(zip(run.rng_before, run.rng_after, strict=True)):
        if not torch.equal(before, after):
            diff = (before.to(torch.int64) - after.to(torch.int64)).abs()
            device = "cpu" if i == 0 else f"cuda:{i - 1}"
            raise AssertionError(
                f"pure: {run.owner}: apply read or advanced the global RNG ({device} "
                f"torch.random.get_rng_state() changed; take randomness from a deepfn.random key); "
                f"largest difference {int(diff.max())} at rng_state[{int(diff.argmax())}]")


def _deterministic(run: _Run) -> None:
    inputs, params, state = run.fresh()
    out = guarded("deterministic", run.owner, "a second identical call", lambda: run.call(params, state, inputs))
    run.compare("deterministic", "two identical calls gave different outputs", out[0], run.out, "output", exact=True)
    run.compare("deterministic", "two identical calls returned different states", out[1], run.out_state,
                "state", exact=True)


def _eval_state(run: _Run) -> None:
    run.compare("eval_state", "apply(train=False) returned a state that differs from the state given",
                run.out_state, run.pristine[2], "state", exact=True)


def _batch_independent(run: _Run) -> None:
    inputs, params, state = run.fresh()
    n = _batch_size(inputs)
    for path, y in pytree.tree_flatten_with_path(run.out)[0]:
        if isinstance(y, torch.Tensor) and (y.ndim == 0 or y.shape[0] != n):
            raise AssertionError(
                f"batch_independent: {run.owner}: output{pytree.keystr(path)} has no leading batch axis of "
                f"size {n} (got shape {list(y.shape)}), so its rows depend on the whole batch; "
                f"largest difference inf at output{pytree.keystr(path)}")

    def row(i: int) -> Any:
        sliced = tree.map(lambda x: x[i:i + 1] if isinstance(x, torch.Tensor) and x.ndim > 0
                          and x.shape[0] == n else x, inputs)
        return run.call(params, state, sliced)[0]

    rows = [guarded("batch_independent", run.owner, f"the call on row {i} alone", lambda i=i: row(i))
            for i in range(n)]
    joined = pytree.tree_map(lambda *ys: torch.cat(ys) if isinstance(ys[0], torch.Tensor) else ys[0], *rows)
    run.compare("batch_independent", "row i of the batched output differs from the output for row i alone",
                joined, run.out, "output")


def _vmap(run: _Run) -> None:
    k1, k2 = random.split(run.key)
    (p1, s1), (p2, s2) = run.block.init(k1), run.block.init(k2)
    inputs = run.fresh()[0]
    loop = [run.call(p, s, _clone(inputs)) for p, s in ((p1, s1), (p2, s2))]
    expected = tree.stack([(y, s) for y, s in loop])

    # The unused batched `_member` lets vmap run even for blocks without params or state.
    def one(p: Any, s: Any, _member: torch.Tensor) -> tuple[Any, Any]:
        return run.call(p, s, inputs)

    members = torch.arange(2, device=run.key.device)
    batched = tree.stack([(p1, s1), (p2, s2)])
    got = guarded("vmap", run.owner, "torch.func.vmap(apply) over two stacked parameter sets",
                  lambda: torch.func.vmap(one)(batched[0], batched[1], members))
    run.compare("vmap", "vmap over two stacked parameter sets differs from applying each set in turn",
                got, expected, "(output, state)")


def _compile(run: _Run) -> None:
    inputs, params, state = run.fresh()
    block, train = run.block, run.train

    def apply(params: Any, state: Any, inputs: tuple[Any, ...], key: Any) -> Any:
        return block.apply(params, state, *inputs, key=key, train=train)

    compiled = torch.compile(with_own_code(apply), fullgraph=True)   # every check compiles afresh
    got = guarded("compile", run.owner, "torch.compile(apply, fullgraph=True)",
                  lambda: compiled(params, state, inputs, run.apply_key))
    run.compare("compile", "the compiled apply differs from eager", got, (run.out, run.out_state),
                "(output, state)")


_RUNNERS = {"pure": _pure, "deterministic": _deterministic, "eval_state": _eval_state,
            "batch_independent": _batch_independent, "vmap": _vmap, "compile": _compile}


def check_block(block: Any, *inputs: Any, key: torch.Tensor | None = None, train: bool = False,
                checks: str | Iterable[str] | None = None, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Check that ``block`` keeps deepfn's promises on ``inputs``; returns ``None``.

    Initialises ``block`` from ``key`` and calls ``apply(params, state, *inputs, key=k,
    train=train)``, where ``k = random.fold_in(key, 1)`` when ``train`` else ``None``. Then runs
    the checks, in this order: ``"pure"`` (inputs, params and state keep their values and
    version counters; the global RNG state is unchanged), ``"deterministic"`` (a second call is
    bit-identical), ``"eval_state"`` (``train=False`` returns the state given; returning the
    very same object, as deepfn's blocks do, is advised, not required), ``"batch_independent"``
    (``train=False``: row ``i`` of every output equals the output of the call on row ``i`` of
    every tensor input; a leading size 1 broadcasts), ``"vmap"`` (``torch.func.vmap`` over two
    parameter sets stacked from ``random.split(key)`` equals a loop) and ``"compile"``
    (``torch.compile(apply, fullgraph=True)`` equals eager).

    Args:
        block: any object with ``init(key)`` and ``apply(params, state, *inputs, key, train)``.
        *inputs: the positional inputs of ``apply``: tensors or pytrees of tensors.
        key: ``int64 [2]`` from ``deepfn.random.key``; default ``random.key(0)``.
        train: passed to ``apply``.
        checks: names from ``CHECKS``; ``None`` runs every check that applies to ``train``.
        rtol, atol: tolerances of the comparisons that need not be bit-identical.

    Raises:
        AssertionError: a property fails; the message starts with the check's name and gives
            the block, the property, the largest difference and its index. An exception inside
            a check is chained to it.
        TypeError: ``block`` lacks ``init``/``apply``, or ``key`` is not a key.
        ValueError: an unknown check; an eval-only check with ``train=True``; tensor inputs
            whose batch sizes differ when ``"batch_independent"`` runs.
    """
    if isinstance(block, type) or not (callable(getattr(block, "init", None))
                                       and callable(getattr(block, "apply", None))):
        hint = "; pass an instance, not the class" if isinstance(block, type) else ""
        raise TypeError("check_block: block must be an object with init(key) and apply(params, state, "
                        f"*inputs, key=None, train=False) (deepfn.typing.Block){hint}; got {describe(block)}")
    if key is None:
        # Params live on the key's device: put the default key where the inputs are.
        tensors = [x for x in tree.leaves(inputs) if isinstance(x, torch.Tensor)]
        key = random.key(0).to(tensors[0].device if tensors else "cpu")
    if not isinstance(key, torch.Tensor) or key.dtype != torch.int64 or key.shape != (2,):
        raise TypeError(f"check_block: key must be an int64 tensor [2] from deepfn.random.key; got {describe(key)}")
    names = _select(checks, bool(train))
    if "batch_independent" in names:
        _batch_size(inputs)
    saved = _rng_state(_cuda_ready())
    try:
        run = _Run(block, inputs, key, bool(train), rtol, atol)
        for name in names:
            _RUNNERS[name](run)
    finally:
        _set_rng_state(saved)  # a block that advanced the global RNG leaves no trace here

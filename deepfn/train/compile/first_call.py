"""The plain compiled step: ``torch.compile(fn, fullgraph=True)`` made on the first call, with
Inductor settings chosen for that call's inputs and without guards on the library's globals
(:mod:`deepfn.train.compile.guard_filter`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ... import _torch, tree
from .dynamic import DynamicDims
from .guard_filter import library_globals_unguarded

__all__ = ["CompileOnFirstCall", "inductor_options", "SMALL_STEP_ELEMENTS", "SMALL_STEP_TENSORS"]

# A step over at most this many numbers, in at most this many tensors, counts as small: see
# inductor_options.
SMALL_STEP_ELEMENTS = 1 << 18
SMALL_STEP_TENSORS = 256


def inductor_options(args: tuple[Any, ...], training: bool = True) -> dict[str, Any]:
    """Inductor settings for compiling a step called with ``args`` (``training``: a graph that
    takes gradients, not an evaluation). Other devices keep Inductor's defaults.

    A training graph whose tensors are all on the CPU: no layout optimization. Inductor
    otherwise turns every convolution's input, weight and gradient into channels-last copies
    on the CPU, and a whole step (forward, backward and update in one graph) then spent ~18%
    more time than without (cnn-seed, 2 cores: 282-313 vs 223-264 ms a step, timed in turns)
    and compiled longer (cnn-small 54 vs 39 s). Evaluation graphs keep it: there the
    channels-last convolutions win (compiled eval steps, timed in turns on 2 cores: cnn-seed
    105-116 vs 145-147 ms, cnn-small 7.5 vs 13.5 ms). Graphs without convolutions are
    unaffected.

    A small step on the CPU (its inputs hold at most ``SMALL_STEP_ELEMENTS`` numbers in at
    most ``SMALL_STEP_TENSORS`` tensors): Inductor's C++ wrapper, which calls the kernels and
    allocates the buffers from C++ instead of a generated Python function. Such a step takes
    well under a millisecond, and the Python wrapper's ~100 buffer allocations and views were
    ~110 us of the mlp-seed step (10->[64,32,16]->5, batch 32, Adam; 2 cores, timed in turns:
    499-534 against 581-628 us a step, saved steps 289-383 against 375-481 us; cold compiles
    equal within this machine's noise, 24.7-28.6 s against 27.3-29.5 s). Larger steps keep the
    Python wrapper: there it is under 1% of a step (mlp-wide, 18-20 ms, no difference), and one
    C++ unit per graph compiles a large graph on one core instead of many kernel files on all
    (a Transformer's split step: 105 against 87-91 s cold).
    """
    tensors = [leaf for leaf in tree.leaves(args) if isinstance(leaf, torch.Tensor)]
    if not tensors or any(t.device.type != "cpu" for t in tensors):
        return {}
    options: dict[str, Any] = {} if not training else {"layout_optimization": False}
    if len(tensors) <= SMALL_STEP_TENSORS and sum(t.numel() for t in tensors) <= SMALL_STEP_ELEMENTS:
        options["cpp_wrapper"] = True
    return options


class CompileOnFirstCall:
    """``torch.compile(fn, fullgraph=True, options=inductor_options(args, training))``, made when
    first called with ``args`` (later calls on other devices keep the first call's settings),
    without guards on torch's and deepfn's globals (:mod:`deepfn.train.compile.guard_filter`).
    ``dynamic``: the batch dims that the first compile takes as symbols."""

    def __init__(self, fn: Callable, *, training: bool = True, dynamic: DynamicDims | None = None) -> None:
        self._fn = fn
        self._training = training
        self._dynamic = dynamic
        self._run: Callable | None = None
        self._programs: int | None = 0

    def compiled_programs(self) -> int | None:
        """The programs its calls have compiled so far (a recompile for new inputs counts one),
        or None when Dynamo's count cannot be read."""
        return self._programs

    def __call__(self, *args: Any) -> Any:
        before = _torch.graphs_compiled()   # compiles happen inside the call, on this thread
        try:
            return self._call(args)
        finally:
            after = _torch.graphs_compiled()
            if self._programs is not None:
                self._programs = None if before is None or after is None else self._programs + after - before

    def _call(self, args: tuple[Any, ...]) -> Any:
        if self._run is None:
            options = {**inductor_options(args, self._training), "guard_filter_fn": library_globals_unguarded(self._fn)}
            self._run = torch.compile(self._fn, fullgraph=True, options=options)
            if self._dynamic is not None:
                return self._run(*self._dynamic.marked(args))
        return self._run(*args)

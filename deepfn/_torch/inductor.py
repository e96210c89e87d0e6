"""Inductor's internals: a lowering for deepfn's custom operators, and the compile counters and
caches the bench reads.

:func:`register_pointwise_lowering` teaches Inductor an operator whose outputs are elementwise
functions of its broadcast inputs (deepfn's Threefry cipher): either one call of the operator's
own kernel (an extern call) or fused pointwise code, the operator's author decides per call.
Without a registered lowering Inductor calls the operator's kernel from compiled code, which
gives the same values: that is the fallback whenever anything here fails (at registration or
while lowering), with one warning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .gate import hook_on, turn_off

#: ``pointwise(ops, *values) -> tuple`` of one value per output, written with Inductor's
#: ``ops`` namespace (``ops.add``, ``ops.bitwise_xor``, ``ops.constant(value, dtype)``, ...).
Pointwise = Callable[..., tuple[Any, ...]]
#: ``extern_when(device, sizes) -> bool``: call the kernel instead (``sizes`` may be symbolic).
ExternWhen = Callable[[torch.device, Sequence[Any]], bool]


def register_pointwise_lowering(op: torch._ops.OpOverload, n_outputs: int, pointwise: Pointwise,
                                extern_when: ExternWhen, dtype: torch.dtype) -> bool:
    """Register the lowering of ``op`` (called once, when the op is first traced); True when
    registered, False when the hook is off or registration failed (then Inductor calls the
    op's kernel: the same values)."""
    if not hook_on("inductor_lowering"):
        return False
    try:
        from torch._inductor import ir
        from torch._inductor.lowering import fallback_handler, lowerings, register_lowering
        from torch._inductor.virtualized import ops

        broadcast = lowerings[torch.ops.aten.broadcast_tensors.default]
        extern = fallback_handler(op, add_to_fallback_set=False)

        def lower(*args: Any) -> tuple[Any, ...]:
            try:
                return _lower(ir, ops, broadcast, extern, args, n_outputs, pointwise, extern_when, dtype)
            except Exception as error:   # changed Inductor internals: the kernel, from compiled code
                turn_off("inductor_lowering", error)
                return tuple(extern(*args))

        register_lowering(op, type_promotion_kind=None)(lower)
        return True
    except Exception as error:
        turn_off("inductor_lowering", error)
        return False


def _lower(ir: Any, ops: Any, broadcast: Callable, extern: Callable, args: Sequence[Any], n_outputs: int,
           pointwise: Pointwise, extern_when: ExternWhen, dtype: torch.dtype) -> tuple[Any, ...]:
    if not hook_on("inductor_lowering"):
        return tuple(extern(*args))
    words = broadcast(list(args))
    size = list(words[0].get_size())
    device = words[0].get_device()
    if extern_when(device, size):
        return tuple(extern(*args))
    loaders = [w.make_loader() for w in words]
    # Run the function once now, with Inductor's formatting handler: an ``ops`` call that no
    # longer fits fails here, inside the lowering (caught: the kernel instead), not later in codegen.
    ir.Pointwise(device=device, dtype=dtype, ranges=size,
                 inner_fn=lambda index: pointwise(ops, *(load(index) for load in loaders))[0]).inner_fn_str()

    def output(i: int) -> Any:
        def inner(index: Any) -> Any:
            return pointwise(ops, *(load(index) for load in loaders))[i]
        # Realised: consumers read a buffer instead of inlining the whole function each. The
        # outputs share their loop, so the scheduler fuses them and CSE computes it once.
        out = ir.Pointwise.create(device=device, dtype=dtype, inner_fn=inner, ranges=size)
        out.realize()
        return out

    return tuple(output(i) for i in range(n_outputs))


def clear_compile_caches() -> None:
    """What a new process would not have: Dynamo's compiled frames (``torch.compiler.reset``)
    and, with the hook on, Inductor's in-memory kernels."""
    torch.compiler.reset()
    clear_kernel_caches()


def clear_kernel_caches() -> None:
    """Inductor's in-memory kernels only (Dynamo's compiled frames stay); nothing with the hook off."""
    if hook_on("compile_stats"):
        try:
            from torch._inductor.utils import clear_caches
            clear_caches()
        except Exception as error:
            turn_off("compile_stats", error)


def phase_seconds() -> dict[str, tuple[int, float]]:
    """Per compile phase (Dynamo's ``dynamo_timed`` names): how many timings so far, their sum
    (empty with the hook off)."""
    if not hook_on("compile_stats"):
        return {}
    try:
        import torch._dynamo.utils
        return {k: (len(v), sum(v)) for k, v in torch._dynamo.utils.compilation_time_metrics.items()}
    except Exception as error:
        turn_off("compile_stats", error)
        return {}


def fx_graph_cache_hits() -> int:
    """How many compiles so far found their graph in Inductor's FX graph cache (0 with the hook off)."""
    if not hook_on("compile_stats"):
        return 0
    try:
        import torch._dynamo.utils
        return int(torch._dynamo.utils.counters["inductor"]["fxgraph_cache_hit"])
    except Exception as error:
        turn_off("compile_stats", error)
        return 0

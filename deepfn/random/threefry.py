"""The Threefry-2x32 block cipher (Salmon et al. 2011, 20 rounds) as one PyTorch operator.

``threefry2x32(k0, k1, x0, x1) -> (y0, y1)`` encrypts counter words ``(x0, x1)`` under key
words ``(k0, k1)``; all four are broadcastable ``int64`` tensors holding unsigned 32-bit
values, and so are the outputs. uint32 tensors support too few ops, so words live in int64.

Why an operator (``torch.library.custom_op``) and not plain tensor code: the cipher is ~140
integer ops. Inline, every call of ``split``/``fold_in``/``bits`` put them into each compiled
graph, and Inductor's C++ backend re-generated that chain in every kernel it fused into (a
small Transformer step spent minutes compiling them); eagerly under ``torch.func.grad`` each
op also paid the transform's dispatch. As an operator the cipher is one graph node:

- eagerly it runs below every functorch layer: on the CPU as one C loop
  (:mod:`deepfn.random.native`, built on first use; an order of magnitude faster than
  the tensor code, most of its time spent writing the int64 outputs), elsewhere
  (or without a C compiler) as plain in-place tensor code;
- under ``vmap`` its batching rule moves the batch axis to the front and calls it once;
- under ``torch.compile`` Dynamo and AOTAutograd see one node (the fake kernel gives shapes).
  Inductor (``_lower``) calls the C loop on the CPU as an extern kernel, so no cipher code is
  generated or compiled (the ~140 inlined operations per draw had been about half of a
  Transformer step's generated C++); on accelerators, or without the loop, it lowers the
  op to a single fused pointwise kernel, realised once.

The integer arithmetic is exact, so every path gives the same bits. Large draws
(``random.bits`` and the uniforms built on it) skip this operator in compiled CPU code and
under transforms: see :mod:`deepfn.random.draw`.
"""

from __future__ import annotations

import torch

from .._torch import plain_eager, register_pointwise_lowering, transforms_active
from . import native as _native

__all__ = ["threefry2x32", "call", "kernel", "directly_callable"]

_MASK = 0xFFFFFFFF
_PARITY = 0x1BD11BDA
_ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)


def _rotations(group: int) -> tuple[int, ...]:
    return _ROTATIONS[4 * (group % 2): 4 * (group % 2) + 4]


def _eager(k0: torch.Tensor, k1: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ks = (k0, k1, k0 ^ k1 ^ _PARITY)
    shape = torch.broadcast_shapes(k0.shape, k1.shape, x0.shape, x1.shape)
    # Only x1 must hold exactly 32 bits (it is rotated); x0 is only added to and xor-ed in,
    # so its low 32 bits stay right without masking. It grows by < 2**32 per addition, 26
    # additions in all: x0 < 2**37, far inside int64. One mask per round instead of two.
    x0 = (x0 + ks[0]).expand(shape).clone()
    x1 = ((x1 + ks[1]) & _MASK).expand(shape).clone()
    # x0 and x1 are fresh, so the rounds work in place: far fewer temporaries eagerly.
    for group in range(5):
        for r in _rotations(group):
            x0.add_(x1)
            high = x1 << r                  # x1 < 2**32, r <= 29: stays inside int64
            x1.bitwise_right_shift_(32 - r).bitwise_or_(high).bitwise_xor_(x0).bitwise_and_(_MASK)
        x0.add_(ks[(group + 1) % 3])
        x1.add_(ks[(group + 2) % 3] + (group + 1)).bitwise_and_(_MASK)
    return x0.bitwise_and_(_MASK), x1


def kernel(k0: torch.Tensor, k1: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cipher on concrete tensors (the operator's body): the C loop on the CPU, else tensor
    code. Returns new tensors."""
    out = _native.threefry2x32(k0, k1, x0, x1)   # None off the CPU or without the C loop
    return out if out is not None else _eager(k0, k1, x0, x1)


def directly_callable(*words: torch.Tensor) -> bool:
    """True when :func:`kernel` may run in place of the operator: eager, no dispatch mode (fake
    tensors, ``make_fx``, flop counters), outside functorch transforms (whose layer would wrap
    the buffers the kernel allocates and writes through raw pointers) and plain tensors (no
    ``vmap``/``grad`` wrappers, no subclasses). The operator's dispatch through its Python
    autograd and CPU kernels costs more per call than the C loop takes for a thousand word
    pairs."""
    return plain_eager(words) and not transforms_active() and all(type(w) is torch.Tensor for w in words)


@torch.library.custom_op("deepfn::threefry2x32", mutates_args=())
def threefry2x32(k0: torch.Tensor, k1: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Threefry-2x32-20 over broadcastable ``int64`` words in ``[0, 2**32)``: ``(y0, y1)``."""
    return kernel(k0, k1, x0, x1)


# The registered operator itself, not its CustomOpDef wrapper: Dynamo puts the operator into
# the graph directly, where it would trace the wrapper's Python on every draw (~30 ms each).
_overload = threefry2x32._opoverload


def call(k0: torch.Tensor, k1: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cipher: its kernel straight away on plain eager tensors, else the operator (one
    graph node under compile, its batching rule under vmap)."""
    if directly_callable(k0, k1, x0, x1):
        return kernel(k0, k1, x0, x1)
    return _overload(k0, k1, x0, x1)


@threefry2x32.register_fake
def _fake(k0, k1, x0, x1):
    _register_inductor_lowering()
    shape = torch.broadcast_shapes(k0.shape, k1.shape, x0.shape, x1.shape)
    return k0.new_empty(shape), k0.new_empty(shape)


@threefry2x32.register_vmap
def _vmap(info, in_dims, *words):
    """Each batched word gets its batch axis first, then ones up to the broadcast rank."""
    logical = [w.shape if d is None else w.shape[:d] + w.shape[d + 1:] for w, d in zip(words, in_dims, strict=True)]
    rank = len(torch.broadcast_shapes(*logical))
    aligned = []
    for w, d, shape in zip(words, in_dims, logical, strict=True):
        ones = (1,) * (rank - len(shape))
        aligned.append(w.reshape((1, *ones, *shape)) if d is None
                       else w.movedim(d, 0).reshape((info.batch_size, *ones, *shape)))
    return threefry2x32(*aligned), (0, 0)


_LOWERING = {"registered": False}   # registration only: no result depends on it
# Fewer word pairs than this (key splits, small masks) stay inlined in compiled code: an
# extern call costs ~20 us of dispatch, more than a small step's whole kernel.
_EXTERN_MIN_PAIRS = 4096


def _extern_worthy(size: list) -> bool:
    """True for at least ``_EXTERN_MIN_PAIRS`` pairs, or a symbolic (dynamic) size."""
    n = 1
    for d in size:
        try:
            n *= int(d)
        except TypeError:
            return True
    return n >= _EXTERN_MIN_PAIRS


def _register_inductor_lowering() -> None:
    """Teach Inductor the cipher (called when the op is first traced): the C loop on the CPU
    for large draws, else one pointwise kernel.

    Without it Inductor calls the operator's kernel from compiled code (same bits, much slower
    on large masks); :mod:`deepfn._torch` falls back to that whenever its hook is off or fails.
    """
    if _LOWERING["registered"]:
        return
    _LOWERING["registered"] = True
    register_pointwise_lowering(threefry2x32._opoverload, 2, _chain, _extern_wanted, torch.int64)


def _extern_wanted(device: torch.device, size: list) -> bool:
    """One call of the C loop: no ~140-op chain in the generated C++ (compile time)."""
    return device.type == "cpu" and _extern_worthy(size) and _native.native() is not None


def _chain(ops, k0, k1, x0, x1):
    """The cipher written with an ``ops`` namespace (Inductor's, in a lowering): ``add``,
    ``bitwise_*``, ``constant(value, dtype)``; returns ``(y0, y1)``."""
    const = lambda v: ops.constant(v, torch.int64)  # noqa: E731
    mask = const(_MASK)
    ks = (k0, k1, ops.bitwise_xor(ops.bitwise_xor(k0, k1), const(_PARITY)))
    x0 = ops.add(x0, ks[0])
    x1 = ops.bitwise_and(ops.add(x1, ks[1]), mask)
    for group in range(5):
        for r in _rotations(group):
            x0 = ops.add(x0, x1)
            rot = ops.bitwise_or(ops.bitwise_left_shift(x1, const(r)), ops.bitwise_right_shift(x1, const(32 - r)))
            x1 = ops.bitwise_and(ops.bitwise_xor(rot, x0), mask)
        x0 = ops.add(x0, ks[(group + 1) % 3])
        x1 = ops.bitwise_and(ops.add(x1, ops.add(ks[(group + 2) % 3], const(group + 1))), mask)
    return ops.bitwise_and(x0, mask), x1

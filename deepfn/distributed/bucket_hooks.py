"""A backward pass that starts each bucket's collective as soon as the bucket's gradients exist.

Twin: the reducer of ``torch.nn.parallel.DistributedDataParallel`` and the post-backward
hooks of ``torch.distributed.fsdp.fully_shard``. A hook on each differentiated parameter
records its gradient; once every gradient of the next bucket (in bucket order) is there, the
bucket is handed to ``launch``, which starts its collective asynchronously while backward
goes on with earlier layers. Buckets launch strictly in order, so every rank issues the same
collectives in the same order. :func:`~deepfn.distributed.grad_and_all_reduce_mean` (DDP's
all-reduce) and :func:`~deepfn.distributed.shard_overlap.grad_and_reduce_scatter_mean`
(FSDP's reduce-scatter) differ only in their hook, their backward call and their launch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from .collectives import Bucket, _raise_collective, plan_buckets

__all__ = ["buckets_from_end", "backward_with_bucket_hooks"]

T = TypeVar("T")

#: ``launch(bucket, grads) -> (out, work)``: pops the bucket's gradients from ``grads``, starts
#: the collective into ``out`` and returns its async ``work`` (None when there is none to wait on).
Launch = Callable[[Bucket, dict[int, torch.Tensor]], tuple[torch.Tensor, Any]]


def buckets_from_end(tensors: Sequence[Any], bucket_bytes: int, first_bucket_bytes: int | None = None) -> list[Bucket]:
    """:func:`~deepfn.distributed.collectives.plan_buckets` of ``tensors`` taken from the last
    one back (backward produces the last layers' gradients first), as indices into ``tensors``."""
    last = len(tensors) - 1
    planned = plan_buckets(tensors[::-1], bucket_bytes, first_bucket_bytes=first_bucket_bytes)
    return [[last - j for j in bucket] for bucket in planned]


def backward_with_bucket_hooks(fn: str, inputs: list[Any], diff: list[int], buckets: list[Bucket],
                               backward: Callable[[], T], launch: Launch, *,
                               post_accumulate: bool) -> tuple[list[torch.Tensor], T]:
    """Run ``backward()`` with a hook on each ``inputs[i]``, ``i`` in ``diff``, launching buckets as they fill.

    Args:
        fn: the public function's name, for errors.
        inputs: the tensors the backward pass differentiates (detached aliases of parameters).
        diff: the indices of ``inputs`` that get a gradient; every one lies in one bucket.
        buckets: lists of indices of ``inputs``, in launch order (:func:`buckets_from_end`).
        backward: runs the forward and backward pass; its result is returned.
        launch: see :data:`Launch`.
        post_accumulate: ``True``: hooks run once the gradient is accumulated into ``.grad``
            (``torch.autograd.backward``), and take it out of the leaf so that the whole
            gradient is freed once its bucket is sent; ``False``: hooks receive the gradient
            itself (``torch.autograd.grad``).

    Returns:
        ``(outs, result)``: each bucket's ``out`` in bucket order, every collective waited on, and
        ``backward()``'s result. A leaf the loss does not reach gets a zero gradient, as
        ``torch.func.grad`` gives (DDP's unused parameter).

    Raises:
        CollectiveError: a collective failed (a rank died or hung).
    """
    bucket_of = {i: b for b, bucket in enumerate(buckets) for i in bucket}
    grads: dict[int, torch.Tensor] = {}
    seen: set[int] = set()
    missing = [len(b) for b in buckets]
    outs: list[torch.Tensor] = []
    works: list[Any] = []

    def launch_ready() -> None:
        while len(outs) < len(buckets) and missing[len(outs)] == 0:
            out, work = launch(buckets[len(outs)], grads)
            outs.append(out)
            if work is not None:
                works.append(work)

    def arrive(i: int, grad: torch.Tensor) -> None:
        grads[i] = grad
        seen.add(i)
        missing[bucket_of[i]] -= 1
        launch_ready()

    def hook_for(i: int) -> Callable[[torch.Tensor], None]:
        def take_grad(leaf: torch.Tensor) -> None:
            grad, leaf.grad = leaf.grad, None    # the leaf must not keep the whole gradient alive
            arrive(i, grad)
        return take_grad if post_accumulate else (lambda grad: arrive(i, grad))

    if post_accumulate:
        handles = [inputs[i].register_post_accumulate_grad_hook(hook_for(i)) for i in diff]
    else:
        handles = [inputs[i].register_hook(hook_for(i)) for i in diff]
    try:
        result = backward()
        for i in diff:
            if i not in seen:   # the loss does not reach this leaf
                arrive(i, torch.zeros_like(inputs[i]))
        launch_ready()
        for work in works:
            work.wait()
    except RuntimeError as err:
        if works:               # a failed collective, not an error of the model
            _raise_collective(fn, err)
        raise
    finally:
        for h in handles:
            h.remove()
    return outs, result

"""The process group: start it from torchrun's environment, ask who we are, end it.

Twin: ``torch.distributed.init_process_group`` / ``get_rank`` / ``get_world_size`` /
``barrier`` / ``destroy_process_group``, plus the device choice a DDP script makes from
``LOCAL_RANK``. Not launched by ``torchrun`` (no ``WORLD_SIZE`` in the environment), every
function here is a single-process no-op: rank 0 of a world of one.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["init", "rank", "world_size", "local_rank", "is_main", "barrier", "shutdown", "is_initialized"]

_BACKENDS = ("gloo", "nccl")
_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _timeout(fn: str, timeout: timedelta | float | int) -> timedelta:
    if isinstance(timeout, timedelta):
        seconds = timeout.total_seconds()
    elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        seconds = float(timeout)
    else:
        raise TypeError(f"{fn}: timeout must be a datetime.timedelta or seconds (float); got {type(timeout).__name__}")
    if not seconds > 0:
        raise ValueError(f"{fn}: timeout must be positive; got {seconds!r} s")
    return timedelta(seconds=seconds)


def _env_int(fn: str, name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{fn}: environment variable {name} must be an int; got {value!r}") from None


def local_rank() -> int:
    """This process's index on its node (``LOCAL_RANK`` set by torchrun; 0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def _device(backend: str) -> torch.device:
    if backend == "nccl":
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def init(backend: str | None = None, *, timeout: timedelta | float = timedelta(minutes=30)) -> torch.device:
    """Join the process group that ``torchrun`` describes in the environment.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.
    Without ``WORLD_SIZE`` (a plain ``python script.py``) nothing is initialised and the
    process is rank 0 of a world of one. Calling ``init`` again returns the same device.

    Args:
        backend: ``"gloo"`` (CPU tensors), ``"nccl"`` (CUDA tensors) or ``None``: NCCL when
            CUDA is available, else gloo.
        timeout: how long a collective waits for the other ranks (a ``timedelta`` or
            seconds) before it raises; this is what makes a job whose rank died or hangs
            fail instead of waiting forever. Gloo honours it per operation; NCCL through
            its watchdog (``TORCH_NCCL_ASYNC_ERROR_HANDLING``, on by default).

    Returns:
        The device this rank computes on: ``cuda:LOCAL_RANK`` with NCCL (made current),
        else ``cpu``. In a single process: ``cuda:0`` if CUDA is available (and ``backend``
        is not ``"gloo"``), else ``cpu``.

    Raises:
        ValueError: an unknown backend, NCCL without CUDA, or a torchrun environment with a
            missing or malformed variable.
    """
    fn = "deepfn.distributed.init"
    if backend is not None and backend not in _BACKENDS:
        raise ValueError(f"{fn}: backend must be None or one of {list(_BACKENDS)}; got {backend!r}")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError(f"{fn}: backend 'nccl' needs CUDA, which is not available; use 'gloo' for CPU")
    wait = _timeout(fn, timeout)
    chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized():
        return _device(dist.get_backend())
    if "WORLD_SIZE" not in os.environ:
        return _device(chosen) if chosen == "nccl" else torch.device("cpu")
    missing = [name for name in _ENV if name not in os.environ]
    if missing:
        raise ValueError(f"{fn}: WORLD_SIZE is set but the torchrun environment lacks {missing}; "
                         "launch with `torchrun --nproc_per_node N script.py`")
    rank_, size = _env_int(fn, "RANK"), _env_int(fn, "WORLD_SIZE")
    if not 0 <= rank_ < size:
        raise ValueError(f"{fn}: RANK must lie in [0, WORLD_SIZE={size}); got {rank_}")
    device = _device(chosen)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(chosen, rank=rank_, world_size=size, timeout=wait)
    except RuntimeError as err:
        hint = _restart_hint()
        if hint is None:
            raise
        raise RuntimeError(f"{fn}: the process group could not form: {hint}; cause: {err}") from err
    return device


def _restart_hint() -> str | None:
    """Why a group that torchrun restarted may fail to connect, or None when it was not restarted
    on a shared store."""
    restarts = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restarts == "0" or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    # torchrun's workers build the group on the rendezvous' own store, which outlives a restart:
    # the restarted ranks can read the previous attempt's addresses from it (pytorch#135712).
    return (f"torchrun restarted this job (TORCHELASTIC_RESTART_COUNT={restarts}) and its workers share "
            f"the rendezvous store, where the previous attempt's connection addresses remain; launch "
            f"torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 and --rdzv-backend c10d, so that every "
            f"attempt gets a fresh store")


def is_initialized() -> bool:
    """Whether a process group is running (``False`` in a single process)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank, ``0 <= rank() < world_size()``; 0 in a single process."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes in the job; 1 in a single process."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0, the one process that should log, save checkpoints and plot."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank arrives here (a no-op in a single process)."""
    if is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Wait for every rank, then leave and destroy the process group (a no-op when none is running).

    Every rank must call it (as every rank calls ``init``). The barrier keeps a rank that
    finishes first (rank 1 skips the writing and printing rank 0 does) from tearing down its
    gloo connections while its peer still holds them: a CI run saw rank 1 abort there
    ("terminate called without an active exception") after its last step.
    """
    if is_initialized():
        dist.barrier()
        dist.destroy_process_group()

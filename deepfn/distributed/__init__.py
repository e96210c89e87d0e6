"""Data-parallel training over ``torch.distributed`` (gloo on CPU, NCCL on CUDA).

Launch with ``torchrun --nproc_per_node N script.py``; in the script::

    device = distributed.init()                     # a no-op in a plain single process
    ts = TrainState.create(model, opt, key)
    distributed.check_same_structure(ts.params)     # fail at start-up, not mid-collective
    ts = distributed.broadcast(ts)                  # every rank starts from rank 0's values
    step = make_train_step(model, loss_fn, opt, all_reduce=distributed.all_reduce_mean)
    idx = distributed.shard_indices(data_key, epoch, n, distributed.rank(), distributed.world_size())

Sharded data parallel (ZeRO-1 / ZeRO-3) for states that outgrow one process::

    ts = distributed.shard(distributed.broadcast(ts), "full")       # this rank's 1/N
    step = make_train_step(model, loss_fn, opt, sharding="full")   # no all_reduce: it reduce-scatters
    ...
    full = distributed.unshard(ts)                                  # every rank: the whole state

Importing this package initialises nothing. Twins: ``torch.nn.parallel.DistributedDataParallel``
with ``DistributedSampler``; ``torch.distributed.fsdp.fully_shard`` for sharding.
"""

from .collectives import all_reduce_mean as all_reduce_mean
from .collectives import broadcast as broadcast
from .faults import CollectiveError as CollectiveError
from .faults import check_same_structure as check_same_structure
from .overlap import grad_and_all_reduce_mean as grad_and_all_reduce_mean
from .process import barrier as barrier
from .process import init as init
from .process import is_initialized as is_initialized
from .process import is_main as is_main
from .process import local_rank as local_rank
from .process import rank as rank
from .process import shutdown as shutdown
from .process import world_size as world_size
from .sampler import shard_indices as shard_indices
from .sampler import shard_size as shard_size
from .sharded_state import ShardedTrainState as ShardedTrainState
from .sharded_state import shard as shard
from .sharded_state import unshard as unshard

__all__ = [
    "CollectiveError", "ShardedTrainState", "all_reduce_mean", "barrier", "broadcast", "check_same_structure",
    "grad_and_all_reduce_mean", "init",
    "is_initialized", "is_main", "local_rank", "rank", "shard", "shard_indices", "shard_size", "shutdown",
    "unshard", "world_size",
]

"""A world of one (no torchrun): every function is a no-op; bucketing and packing logic."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st

from deepfn import distributed, models, random, tree
from deepfn.distributed.collectives import pack, plan_buckets, unpack
from deepfn.distributed.faults import describe_leaves

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def no_torchrun(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)


def grads():
    return {"w": torch.randn(3, 4, dtype=torch.float64), "b": {"x": torch.ones(5), "n": torch.tensor(3)}}


def test_importing_deepfn_starts_no_process_group():
    assert not dist.is_initialized()


def test_without_torchrun_everything_is_a_single_process_no_op(no_torchrun):
    device = distributed.init("gloo")
    assert device == torch.device("cpu")
    assert not dist.is_initialized()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    distributed.barrier()
    distributed.shutdown()
    g = grads()
    before = tree.map(torch.clone, g)
    for fn in (distributed.all_reduce_mean, distributed.broadcast):
        out = fn(g)
        assert out is not g and tree.all_equal(out, before)
    assert tree.all_equal(g, before)


def test_init_picks_cuda_only_when_available(no_torchrun):
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert distributed.init() == expected


def test_a_real_gloo_group_of_one(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(port)).items():
        monkeypatch.setenv(name, value)
    try:
        assert distributed.init("gloo", timeout=10) == torch.device("cpu")
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        assert distributed.init("gloo") == torch.device("cpu")            # idempotent
        assert (distributed.rank(), distributed.world_size()) == (0, 1)
        distributed.barrier()
        g = grads()
        assert tree.all_equal(distributed.all_reduce_mean(g), g)
        params, _ = models.MLP(3, [4], 2).init(random.key(0))
        assert distributed.check_same_structure(params) == distributed.check_same_structure(params)
    finally:
        distributed.shutdown()
    assert not dist.is_initialized()


def test_plan_buckets_respects_size_dtype_and_order():
    leaves = [torch.zeros(10), torch.zeros(10, dtype=torch.float64), torch.zeros(30), torch.zeros(5),
              torch.tensor(1), 2.0, torch.zeros(10)]
    # float32 leaves: 40, 120, 20, 40 bytes; a bucket closes once it holds 64 bytes or more.
    assert plan_buckets(leaves, 64) == [[0, 2], [1], [3, 6]]
    assert plan_buckets(leaves, 40) == [[0], [1], [2], [3, 6]]
    assert plan_buckets(leaves, 10**6) == [[0, 2, 3, 6], [1]]
    assert plan_buckets(leaves, 64, floating_only=False) == [[0, 2], [1], [3, 6], [4]]
    # DDP's small first bucket: only the first bucket of each dtype has the lower limit.
    assert plan_buckets(leaves, 10**6, first_bucket_bytes=30) == [[0], [1], [2, 3, 6]]
    assert plan_buckets(leaves, 10**6, first_bucket_bytes=200) == [[0, 2, 3, 6], [1]]
    assert plan_buckets(leaves, 130, first_bucket_bytes=150) == [[0, 2], [1], [3, 6]]


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.tuples(st.integers(1, 300), st.sampled_from([torch.float32, torch.float64, torch.float16])),
                      min_size=1, max_size=12),
       limits=st.tuples(st.integers(1, 2000), st.integers(1, 2000)))
def test_plan_buckets_equals_ddps_assignment(sizes, limits):
    leaves = [torch.zeros(n, dtype=dtype) for n, dtype in sizes]
    first, rest = limits
    ddp, _ = dist._compute_bucket_assignment_by_size(leaves, [first, rest])
    assert plan_buckets(leaves, rest, first_bucket_bytes=first) == [list(b) for b in ddp]
    ddp_one_limit, _ = dist._compute_bucket_assignment_by_size(leaves, [rest])
    assert plan_buckets(leaves, rest) == [list(b) for b in ddp_one_limit]


@pytest.mark.parametrize("first_bucket_mb", [0, -1.0, "1"])
def test_bad_first_bucket_size_raises(first_bucket_mb):
    from deepfn.distributed import grad_and_all_reduce_mean
    with pytest.raises(ValueError, match=r"first_bucket_mb must be a positive number; got"):
        grad_and_all_reduce_mean(lambda p: (p["w"].sum(), None), {"w": torch.ones(2)}, first_bucket_mb=first_bucket_mb)


def test_pack_then_unpack_restores_every_leaf():
    leaves = [torch.randn(2, 3), torch.randn(4), torch.randn(1, 1, 2)]
    flat = pack(leaves, [0, 1, 2])
    assert flat.shape == (12,)
    out = [None] * 3
    unpack(flat, leaves, [0, 1, 2], out)
    for a, b in zip(out, leaves, strict=True):
        assert torch.equal(a, b)
    flat.zero_()                                   # the packed copy never aliases the input
    assert leaves[0].abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_pack_scales_each_leaf_as_ddp_does(dtype):
    leaves = [torch.randn(3, 5, dtype=dtype), torch.randn(7, dtype=dtype).t(), torch.randn(2, 4, dtype=dtype).t()]
    flat = pack(leaves, [2, 0], 1.0 / 3)
    # DDP's reducer: grad * (1 / world_size), written into the bucket (bit for bit, not grad / 3)
    want = torch.cat([leaves[2].reshape(-1), leaves[0].reshape(-1)]) * (1.0 / 3)
    assert flat.dtype == dtype and torch.equal(flat, want)


def test_structure_digest_depends_on_names_shapes_and_dtypes_not_values():
    a, _ = models.MLP(3, [4], 2).init(random.key(0))
    b, _ = models.MLP(3, [4], 2).init(random.key(1))
    c, _ = models.MLP(3, [5], 2).init(random.key(0))
    digest = distributed.check_same_structure
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)
    assert digest(a) != digest(tree.cast(a, torch.float64))
    assert describe_leaves(a)[0] == "network.0.weight float32[4, 3]"


@pytest.mark.parametrize("bucket_mb", [0, -1.0, True, "25"])
def test_bad_bucket_size_raises(bucket_mb):
    with pytest.raises(ValueError, match=r"all_reduce_mean: bucket_mb must be a positive number; got"):
        distributed.all_reduce_mean(grads(), bucket_mb=bucket_mb)


@pytest.mark.parametrize("src", [1, -1, 0.0])
def test_broadcast_from_a_rank_outside_the_job_raises(no_torchrun, src):
    with pytest.raises(ValueError, match=r"broadcast: src must be a rank in \[0, 1\); got"):
        distributed.broadcast(grads(), src=src)


def test_unknown_backend_raises(no_torchrun):
    with pytest.raises(ValueError, match=r"init: backend must be None or one of \['gloo', 'nccl'\]; got 'mpi'"):
        distributed.init("mpi")


def test_nccl_without_cuda_raises(no_torchrun):
    if torch.cuda.is_available():
        assert distributed.init("nccl") == torch.device("cuda", 0)
        return
    with pytest.raises(ValueError, match="init: backend 'nccl' needs CUDA"):
        distributed.init("nccl")


@pytest.mark.parametrize("timeout, error, match", [
    (0, ValueError, "timeout must be positive; got 0.0 s"),
    ("30", TypeError, "timeout must be a datetime.timedelta or seconds"),
])
def test_bad_timeout_raises(no_torchrun, timeout, error, match):
    with pytest.raises(error, match="deepfn.distributed.init: " + match):
        distributed.init("gloo", timeout=timeout)


@pytest.mark.parametrize("env, match", [
    (dict(WORLD_SIZE="2", RANK="0"), r"lacks \['MASTER_ADDR', 'MASTER_PORT'\]"),
    (dict(WORLD_SIZE="2", RANK="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="1"), r"RANK must lie in \[0, WORLD_SIZE=2\); got 2"),
    (dict(WORLD_SIZE="two", RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="1"), "WORLD_SIZE must be an int; got 'two'"),
])
def test_a_broken_torchrun_environment_raises(no_torchrun, monkeypatch, env, match):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="deepfn.distributed.init: .*" + match):
        distributed.init("gloo")


def test_the_train_step_all_reduces_once_per_update_not_per_micro_batch():
    from deepfn import losses, optim
    from deepfn.train import TrainState, make_train_step

    calls = []

    def all_reduce(g):
        calls.append(tree.flatten(g))
        return distributed.all_reduce_mean(g)

    model, opt = models.MLP(3, [4], 2), optim.sgd(0.1)
    step = make_train_step(model, losses.cross_entropy, opt, accumulation_steps=2, all_reduce=all_reduce, compile=False)
    ts = TrainState.create(model, opt, random.key(0))
    x, y = random.normal(random.key(1), (4, 3)), random.randint(random.key(2), (4,), 0, 2)
    for _ in range(3):
        ts, _ = step(ts, (x, y), None)
    assert len(calls) == 3
    assert set(calls[0]) == set(tree.flatten(ts.params))      # the whole gradient tree, once

"""Sharding in one process (a world of one, no process group): the layout, shard/unshard,
the sharded step against the reference step (eager and compiled), checkpoints of sharded
states, and one test per rejected input."""

from __future__ import annotations

import pytest
import torch

from deepfn import checkpoint, distributed, losses, optim, tree
from deepfn.distributed import ShardedTrainState
from deepfn.distributed.shard_collectives import all_gather_leaves, reduce_scatter_mean_leaves
from deepfn.distributed.sharded_state import chunk_size, shard_leaf
from deepfn.train import TrainState, make_train_step

from ..utils import assert_trees_close
from . import shard_scenarios as sc


def test_shard_leaf_pads_and_cuts_into_equal_chunks():
    x = torch.arange(10.0).reshape(2, 5)
    chunks = [shard_leaf(x, r, 4) for r in range(4)]
    assert [c.tolist() for c in chunks] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 0, 0]]
    assert chunk_size(10, 4) == 3 and chunk_size(0, 4) == 0 and chunk_size(8, 4) == 2
    assert torch.cat(chunks)[:10].reshape(2, 5).equal(x)


def test_collectives_of_a_world_of_one_are_identities():
    leaves = [torch.arange(6.0).reshape(2, 3), torch.ones(1, dtype=torch.float64)]
    chunks = reduce_scatter_mean_leaves(leaves, bucket_mb=1e-5)   # one leaf per bucket
    assert [c.shape for c in chunks] == [torch.Size([6]), torch.Size([1])]
    back = all_gather_leaves(chunks, [(2, 3), (1,)])
    assert back[0].equal(leaves[0]) and back[1].equal(leaves[1]) and back[1].dtype == torch.float64


@pytest.mark.parametrize("sharding", ["optimizer", "full"])
def test_shard_then_unshard_gives_the_state_back(sharding):
    ts = sc.start("adamw_accum_scaled_clipped")
    sharded = distributed.shard(ts, sharding)
    assert isinstance(sharded, ShardedTrainState) and sharded.sharding == sharding
    assert sharded.world_size == 1 and sharded.rank == 0
    assert sharded.param_shapes == tuple(tuple(x.shape) for x in tree.leaves(ts.params))
    # AdamW's counts stay whole (0-d); its moments are sharded like the params.
    opt_leaves = tree.leaves(ts.opt_state)
    assert len(sharded.opt_shapes) == len(opt_leaves)
    assert [s is None for s in sharded.opt_shapes] == [x.ndim == 0 for x in opt_leaves]
    params_sharded = all(x.ndim == 1 for x in tree.leaves(sharded.params))
    assert params_sharded == (sharding == "full")
    back = distributed.unshard(sharded)
    assert type(back) is TrainState
    assert tree.all_equal(back, ts)


def test_the_pytree_keeps_the_layout():
    sharded = distributed.shard(sc.start("sgd_momentum"), "full")
    cloned = tree.map(torch.clone, sharded)
    assert isinstance(cloned, ShardedTrainState)
    assert (cloned.sharding, cloned.param_shapes, cloned.opt_shapes) == (
        sharded.sharding, sharded.param_shapes, sharded.opt_shapes)
    assert len(tree.leaves(cloned)) == len(tree.leaves(sharded))   # the layout is no leaf


@pytest.mark.parametrize("sharding", ["optimizer", "full"])
@pytest.mark.parametrize("name", ["adamw_accum_scaled_clipped", "adam_decay_donated", "transformer_layer"])
def test_sharded_step_equals_the_reference_step(name, sharding):
    expected, expected_losses = sc.reference(name)
    got, got_losses = sc.train(name, distributed.shard(sc.start(name), sharding), range(sc.STEPS),
                               sharding=sharding)
    got = distributed.unshard(got)
    assert_trees_close(got.params, expected.params, rtol=1e-6, atol=1e-7)
    assert_trees_close(got.opt_state, expected.opt_state, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got_losses, expected_losses)
    assert int(got.step) == sc.STEPS


def test_compiled_sharded_step_equals_the_reference_step():
    name = "adamw_accum_scaled_clipped"
    expected, _ = sc.reference(name)
    got, _ = sc.train(name, distributed.shard(sc.start(name), "full"), range(sc.STEPS), sharding="full",
                      compile=True)
    assert_trees_close(distributed.unshard(got).params, expected.params, rtol=1e-5, atol=1e-6)


def test_sharded_metrics_match_the_reference_metrics():
    model, opt, options = sc.SCENARIOS["adamw_accum_scaled_clipped"]
    ts = sc.start("adamw_accum_scaled_clipped")
    batch = sc.data("adamw_accum_scaled_clipped", 0)
    plain = make_train_step(model, losses.cross_entropy, opt, compile=False, **options)(ts, batch, None)[1]
    step = make_train_step(model, losses.cross_entropy, opt, compile=False, sharding="full", **options)
    sharded = step(distributed.shard(ts, "full"), batch, None)[1]
    assert set(sharded) == set(plain)
    for k in plain:
        torch.testing.assert_close(sharded[k], plain[k], msg=k)


def test_a_nonfinite_step_is_skipped_and_backs_off_the_scale():
    model, opt, options = sc.SCENARIOS["adamw_accum_scaled_clipped"]
    ts = distributed.shard(sc.start("adamw_accum_scaled_clipped"), "full")
    x, y = sc.data("adamw_accum_scaled_clipped", 0)
    step = make_train_step(model, losses.cross_entropy, opt, compile=False, sharding="full", **options)
    new, metrics = step(ts, (x.clone().fill_(float("nan")), y), None)
    assert bool(metrics["nonfinite"]) and not bool(metrics["grads_finite"])
    assert tree.all_equal(new.params, ts.params) and tree.all_equal(new.opt_state, ts.opt_state)
    assert float(new.loss_scale.loss_scale) == float(options["loss_scale"].loss_scale) / 2


def test_a_sharded_state_round_trips_through_a_checkpoint(tmp_path):
    sharded = distributed.shard(sc.start("adamw_accum_scaled_clipped"), "optimizer")
    checkpoint.save(tmp_path / "rank0.safetensors", sharded)
    loaded = checkpoint.load(tmp_path / "rank0.safetensors")
    assert type(loaded) is ShardedTrainState
    assert (loaded.sharding, loaded.world_size, loaded.rank, loaded.param_shapes, loaded.opt_shapes) == (
        sharded.sharding, sharded.world_size, sharded.rank, sharded.param_shapes, sharded.opt_shapes)
    assert tree.all_equal(loaded, sharded)


# One test per rejected input.

def test_shard_rejects_an_unknown_sharding():
    with pytest.raises(ValueError, match=r"deepfn.distributed.shard: sharding must be one of .*got 'zero3'"):
        distributed.shard(sc.start("sgd_momentum"), "zero3")


def test_shard_rejects_a_state_sharded_already():
    sharded = distributed.shard(sc.start("sgd_momentum"), "full")
    with pytest.raises(TypeError, match="sharded already"):
        distributed.shard(sharded, "full")


def test_shard_rejects_what_is_not_a_train_state():
    with pytest.raises(TypeError, match="expected a deepfn.train.TrainState; got dict"):
        distributed.shard({"w": torch.ones(2)}, "full")


def test_unshard_rejects_a_state_that_is_not_sharded():
    with pytest.raises(TypeError, match="expected a ShardedTrainState .* got TrainState, which is not sharded"):
        distributed.unshard(sc.start("sgd_momentum"))


def test_unshard_rejects_a_state_of_another_world_size():
    sharded = distributed.shard(sc.start("sgd_momentum"), "full")
    with pytest.raises(ValueError, match="cut for 2 ranks but this job has 1"):
        distributed.unshard(sharded.replace(world_size=2))


def test_the_step_rejects_a_state_of_another_world_size():
    sharded = distributed.shard(sc.start("sgd_momentum"), "full").replace(world_size=4, rank=3)
    with pytest.raises(ValueError, match="cut for 4 ranks but this job has 1"):
        sc.train("sgd_momentum", sharded, range(1), sharding="full")


def test_make_train_step_rejects_an_unknown_sharding():
    model, opt, _ = sc.SCENARIOS["sgd_momentum"]
    with pytest.raises(ValueError, match="sharding must be None or one of .*got 'zero'"):
        make_train_step(model, losses.cross_entropy, opt, sharding="zero")


def test_make_train_step_rejects_an_optimizer_that_needs_the_whole_tree():
    model, _, _ = sc.SCENARIOS["sgd_momentum"]
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.sgd(0.1))
    with pytest.raises(ValueError, match="clip_by_global_norm, which needs the whole gradient tree"):
        make_train_step(model, losses.cross_entropy, opt, sharding="optimizer")


def test_make_train_step_rejects_an_all_reduce_with_sharding():
    model, opt, _ = sc.SCENARIOS["sgd_momentum"]
    with pytest.raises(ValueError, match="averages gradients itself"):
        make_train_step(model, losses.cross_entropy, opt, sharding="full", all_reduce=distributed.all_reduce_mean)


def test_make_train_step_rejects_split_compile_with_sharding():
    model, opt, _ = sc.SCENARIOS["sgd_momentum"]
    with pytest.raises(ValueError, match="compile='split' and compile_cache are not available"):
        make_train_step(model, losses.cross_entropy, opt, sharding="full", compile="split")


def test_a_sharded_step_rejects_a_full_state():
    with pytest.raises(TypeError, match="needs this rank's ShardedTrainState .* got TrainState"):
        sc.train("sgd_momentum", sc.start("sgd_momentum"), range(1), sharding="full")


def test_a_sharded_step_rejects_a_state_of_the_other_sharding():
    sharded = distributed.shard(sc.start("sgd_momentum"), "optimizer")
    with pytest.raises(ValueError, match="made with sharding='full' but the state is sharded with 'optimizer'"):
        sc.train("sgd_momentum", sharded, range(1), sharding="full")


def test_the_plain_step_rejects_a_sharded_state():
    sharded = distributed.shard(sc.start("sgd_momentum"), "full")
    with pytest.raises(TypeError, match=r"the train state is sharded \('full'\); make the step with"):
        sc.train("sgd_momentum", sharded, range(1))


def test_a_sharded_state_rejects_an_unknown_sharding_field():
    with pytest.raises(ValueError, match="ShardedTrainState: sharding must be one of"):
        ShardedTrainState({}, {}, (), sharding="both")

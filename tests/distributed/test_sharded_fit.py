"""``fit`` over a sharded train state, and the scripts' ``--sharding`` flag.

``fit`` keeps a ``ShardedTrainState`` sharded through the loop and gives validation,
``on_epoch_end`` and the checkpoints the whole state (``distributed.unshard``), so a checkpoint
is one full file and a resume shards it again. In a single process (a world of one) every
sharding must train exactly as the plain state does, resumed or not; under torchrun,
``train_transformer.py --distributed --sharding full`` must train as ``--sharding none``
(to float tolerance: reduce-scatter and all-reduce sum in another order).
"""

from __future__ import annotations

import json

import pytest
import torch

from deepfn import checkpoint, distributed, losses, optim, random, tree
from deepfn.models import MLP
from deepfn.train import TrainState, fit, make_eval_step, make_train_step

from ..scripts.test_scripts import MULTI30K, _script
from ..utils import assert_trees_close
from .launch import finish, one_node, torchrun

MODEL, OPT = MLP(6, (8,), 3), optim.adam(0.05)


def _fit(sharding, folder, **kw):
    x = torch.linspace(-1, 1, 30 * 6).reshape(30, 6)
    y = (x[:, 0] > 0).long()
    step = make_train_step(MODEL, losses.cross_entropy, OPT, compile=False, clip_norm=1.0, sharding=sharding)
    ts = TrainState.create(MODEL, OPT, random.key(1))
    if sharding is not None:
        ts = distributed.shard(ts, sharding)
    seen = []
    return fit(step, ts, (x, y), epochs=3, batch_size=8, key=random.key(2), progress=False,
               eval_step=make_eval_step(MODEL, losses.cross_entropy, compile=False), val_data=(x, y),
               on_epoch_end=lambda state, row: seen.append(type(state).__name__),
               checkpoint_dir=str(folder), restore_best=False, **kw) + (seen,)


@pytest.mark.parametrize("sharding", ["optimizer", "full"])
def test_fit_of_a_sharded_state_trains_saves_and_resumes_as_the_whole_state(sharding, tmp_path):
    want, want_history, _ = _fit(None, tmp_path / "plain")
    straight, straight_history, _ = _fit(sharding, tmp_path / "straight")
    _fit(sharding, tmp_path / "resumed", max_steps=4)           # stops in epoch 2
    got, got_history, seen = _fit(sharding, tmp_path / "resumed", resume=True)
    assert isinstance(got, distributed.ShardedTrainState) and got.sharding == sharding
    assert tree.all_equal(got, straight)                        # the resumed run continues exactly
    assert seen == ["TrainState", "TrainState"]                 # on_epoch_end sees it whole
    # The global clipping norm sums the shards' squares in another order: float tolerance.
    whole = distributed.unshard(got)
    assert_trees_close(whole.params, want.params, rtol=1e-5, atol=1e-6)
    assert_trees_close(whole.opt_state, want.opt_state, rtol=1e-5, atol=1e-6)
    saved = checkpoint.load(tmp_path / "resumed" / "ckpt_000000009.safetensors")
    assert type(saved) is TrainState                            # one full file, which one process loads
    assert tree.all_equal(saved, whole)
    # Validation of the whole state (epoch 2's train means cover only the steps after the resume).
    keep = ("epoch", "step", "val_loss", "val_accuracy")
    complete = [{k: r[k] for k in keep} for r in got_history.rows if not r["partial"]]
    assert complete == [{k: r[k] for k in keep} for r in straight_history.rows]
    assert [r["val_loss"] for r in straight_history.rows] == pytest.approx(
        [r["val_loss"] for r in want_history.rows], rel=1e-5)


@pytest.mark.parametrize("before, after", [(None, "full"), ("optimizer", None)])
def test_a_resume_may_change_the_sharding(before, after, tmp_path):
    want, _, _ = _fit(None, tmp_path / "plain")
    _fit(before, tmp_path / "run", max_steps=4)
    got, _, _ = _fit(after, tmp_path / "run", resume=True)
    assert isinstance(got, distributed.ShardedTrainState) == (after is not None)
    whole = distributed.unshard(got) if after is not None else got
    assert_trees_close(whole.params, want.params, rtol=1e-5, atol=1e-6)
    assert_trees_close(whole.opt_state, want.opt_state, rtol=1e-5, atol=1e-6)


def test_sharding_without_distributed_exits_2_naming_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        _script("train_transformer").main(["--sharding", "full", "--out", str(tmp_path / "tr")])
    assert done.value.code == 2
    assert "argument --sharding: full shards the train state over torchrun's processes; add --distributed" \
        in capsys.readouterr().err


def test_an_unknown_sharding_exits_2_naming_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        _script("train_transformer").main(["--distributed", "--sharding", "zero3", "--out", str(tmp_path / "tr")])
    assert done.value.code == 2
    assert "argument --sharding: invalid choice: 'zero3'" in capsys.readouterr().err


TRANSFORMER = ["--distributed", "--dist-timeout", "60", "--no-compile", "--no-progress", "--epochs", "1",
               "--data-dir", MULTI30K, "--limit", "48", "--vocab-size", "300", "--d-model", "16", "--n-heads", "2",
               "--n-layers", "1", "--d-ff", "32", "--max-len", "12", "--bleu-subset", "4", "--beam-size", "2",
               "--batch-size", "16", "--max-steps", "3"]


@pytest.fixture(scope="module")
def transformer_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded_transformer")
    procs = {name: torchrun(one_node(0), [*TRANSFORMER, "--sharding", name, "--out", str(root / name)], root,
                            script="train_transformer.py") for name in ("none", "full")}
    return {"root": root, **{name: finish(proc) for name, proc in procs.items()}}


def test_train_transformer_with_full_sharding_trains_as_data_parallel(transformer_runs):
    root = transformer_runs["root"]
    assert sum(line.startswith("RESULT ") for line in transformer_runs["full"].stdout.splitlines()) == 1
    assert json.loads((root / "full" / "config.json").read_text())["sharding"] == "full"
    got = checkpoint.load(root / "full" / "checkpoints" / "ckpt_000000003.safetensors")
    want = checkpoint.load(root / "none" / "checkpoints" / "ckpt_000000003.safetensors")
    assert type(got) is TrainState and int(got.step) == 3        # saved whole, not rank 0's share
    assert_trees_close(got.params, want.params, rtol=1e-5, atol=1e-6)
    assert_trees_close(got.opt_state, want.opt_state, rtol=1e-5, atol=1e-6)
    result, reference = (json.loads((root / name / "result.json").read_text()) for name in ("full", "none"))
    assert result["params"] == reference["params"]               # counted on the whole parameters
    assert result["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-5)


MLP_FLAGS = ["--distributed", "--no-compile", "--no-progress", "--epochs", "1", "--batch-size", "32",
             "--hidden", "16", "--max-steps", "3"]


def test_train_mlp_with_sharding_in_a_world_of_one_trains_as_without(tmp_path):
    # Without torchrun, --distributed is a world of one: the flag's wiring (shard, sharded step,
    # whole checkpoint, unshard for the test evaluation) runs in this process.
    main = _script("train_mlp").main
    results = {name: main([*MLP_FLAGS, "--sharding", name, "--out", str(tmp_path / name)])
               for name in ("none", "full")}
    got, want = (checkpoint.load(tmp_path / name / "checkpoints" / "ckpt_000000003.safetensors")
                 for name in ("full", "none"))
    assert type(got) is TrainState
    assert_trees_close(got.params, want.params, rtol=1e-5, atol=1e-6)
    assert_trees_close(got.state, want.state, rtol=1e-5, atol=1e-6)     # batch-norm statistics
    assert results["full"]["test_acc"] == pytest.approx(results["none"]["test_acc"], abs=1e-6)

"""Elastic training with torchrun's own machinery: ``--max-restarts 1`` and the script's ``--resume``.

One rank of ``train_mlp.py --distributed --resume`` kills itself with SIGKILL in the middle of
epoch 2 (``DEEPFN_TEST_KILL_AT_STEP``, read only by the scripts); torchrun stops the other rank,
starts the group again, every rank resumes from the end-of-epoch-1 checkpoint that rank 0
wrote, replays epoch 2's batches (the order is a function of seed, epoch and step only) and
ends with the parameters of a run that was never interrupted, bit for bit (same world size,
one thread per process). Batch norm and dropout stay on: their running statistics and keys
must resume too. The same with ``--sharding full`` (ZeRO-3) and ``--sharding optimizer`` (ZeRO-1):
the checkpoints stay whole files, and the restarted group shards the one it resumes from.
"""

from __future__ import annotations

import json
import sys

import pytest

from deepfn import checkpoint, tree

from .launch import SCRIPTS, finish, one_node, rows, same_checkpoints, torchrun

# 1257 training digits, global batch 64 over 2 ranks: 19 updates per epoch, 38 in all.
FLAGS = ["--distributed", "--dist-timeout", "60", "--no-compile", "--no-progress", "--epochs", "2",
         "--batch-size", "64", "--hidden", "32", "16", "--resume"]
KILL_AT = "1:25"           # rank 1, before the update from step 25: epoch 2's 7th batch
LAST = "ckpt_000000038.safetensors"


# The sharded restarts are slow-marked to keep the default run short (each is four more processes
# to start). The restart itself is the one "none" takes here; what sharding adds is covered by
# default tests: fit resuming both shardings from a whole checkpoint (test_sharded_fit's
# test_fit_of_a_sharded_state_trains_saves_and_resumes_as_the_whole_state), two ranks sharding a
# whole checkpoint again (test_shard_multiprocess's
# test_resume_on_another_world_size_from_the_full_checkpoint) and the scripts' --sharding full
# under torchrun (test_sharded_fit's test_train_transformer_with_full_sharding_trains_as_data_parallel).
SHARDED = pytest.mark.slow


@pytest.fixture(scope="module", ids=lambda s: f"sharding={s}",
                params=["none", pytest.param("full", marks=SHARDED), pytest.param("optimizer", marks=SHARDED)])
def runs(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"elastic_{request.param}")
    flags = [*FLAGS, "--sharding", request.param]
    # Both runs at once (they are independent): the reference never stops, the other loses a rank.
    # torchrun's workers share its rendezvous store by default, where a restarted group can find the
    # previous attempt's addresses (a race); TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 gives every attempt a new one.
    reference = torchrun(one_node(0), [*flags, "--out", str(root / "reference")], root)
    killed = torchrun(one_node(1), [*flags, "--out", str(root / "killed")], root,
                      DEEPFN_TEST_KILL_AT_STEP=KILL_AT, TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    return {"root": root, "reference": finish(reference), "killed": finish(killed)}


def test_a_rank_was_killed_and_torchrun_restarted_the_group(runs):
    killed = runs["killed"]
    assert "exitcode: -9" in killed.stderr, killed.stderr[-3000:]           # SIGKILL, seen by torchrun
    epochs = [line.split()[1] for line in killed.stdout.splitlines() if line.startswith("epoch ")]
    assert epochs == ["1/2", "2/2"], killed.stdout         # epoch 1 by the first attempt, 2 by the second
    assert sum(line.startswith("RESULT ") for line in killed.stdout.splitlines()) == 1


def test_final_parameters_equal_an_uninterrupted_run(runs):
    root = runs["root"]
    got = same_checkpoints(root / "killed", root / "reference", LAST, 38)
    # Guards the oracle: training moved the parameters after the checkpoint resumed from.
    resumed_from = checkpoint.load(root / "killed" / "checkpoints" / "ckpt_000000019.safetensors")
    assert not tree.all_equal(resumed_from.params, got.params)


def test_history_and_result_equal_an_uninterrupted_run(runs):
    root = runs["root"]
    assert rows(root / "killed") == rows(root / "reference")
    assert [r["step"] for r in rows(root / "killed")] == [19, 38]
    got, want = (json.loads((root / name / "result.json").read_text()) for name in ("killed", "reference"))
    assert {k: v for k, v in got.items() if k != "wall_s"} == {k: v for k, v in want.items() if k != "wall_s"}


def scripts_common():
    """``scripts/_common.py``, imported as the scripts import it."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        import _common
    finally:
        sys.path.remove(str(SCRIPTS))
    return _common


def test_a_malformed_kill_switch_is_refused(monkeypatch):
    _common = scripts_common()
    monkeypatch.setenv("DEEPFN_TEST_KILL_AT_STEP", "one:25")
    with pytest.raises(SystemExit, match=r"DEEPFN_TEST_KILL_AT_STEP must be RANK:STEP .*got 'one:25'"):
        _common.kill_switch(lambda ts, batch, key: (ts, {}))


def test_without_the_kill_switch_the_step_is_returned_unchanged(monkeypatch):
    _common = scripts_common()
    monkeypatch.delenv("DEEPFN_TEST_KILL_AT_STEP", raising=False)
    step = lambda ts, batch, key: (ts, {})   # noqa: E731
    assert _common.kill_switch(step) is step
    monkeypatch.setenv("DEEPFN_TEST_KILL_AT_STEP", "0:3")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")   # a restarted attempt trains on
    assert _common.kill_switch(step) is step


def _torchrun_env(monkeypatch, restarts: str) -> None:
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "1"),
                        ("TORCHELASTIC_RESTART_COUNT", restarts), ("TORCHELASTIC_USE_AGENT_STORE", "True")):
        monkeypatch.setenv(name, value)


def _refused(*args, **kwargs):
    raise RuntimeError("Gloo connectFullMesh failed with ... Connection refused")


def test_a_restarted_group_that_cannot_connect_names_the_shared_store(monkeypatch):
    import torch.distributed

    from deepfn import distributed
    _torchrun_env(monkeypatch, "1")
    monkeypatch.setattr(torch.distributed, "init_process_group", _refused)
    with pytest.raises(RuntimeError, match=r"TORCHELASTIC_RESTART_COUNT=1\) and its workers share the rendezvous "
                                           r"store.*TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1.*Connection refused"):
        distributed.init("gloo")


def test_a_first_attempt_that_cannot_connect_raises_torch_s_own_error(monkeypatch):
    import torch.distributed

    from deepfn import distributed
    _torchrun_env(monkeypatch, "0")
    monkeypatch.setattr(torch.distributed, "init_process_group", _refused)
    with pytest.raises(RuntimeError, match=r"^Gloo connectFullMesh failed with \.\.\. Connection refused$"):
        distributed.init("gloo")

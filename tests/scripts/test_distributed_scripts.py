"""``torchrun --nproc_per_node 2 scripts/train_mlp.py --distributed`` on 127.0.0.1 (gloo).

Two launches (3 updates, then ``--resume`` to 6) must leave the same files as one
process would, written once by rank 0, and the same parameters, to float tolerance, as a
plain single-process run on the same global batches (no batch norm, no dropout: those
make a rank's update depend on its own share of the batch).
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from deepfn import checkpoint, tree

from ..utils import assert_trees_close
from .test_scripts import SCRIPTS, _outputs, _script

EXACT = ["--no-compile", "--no-progress", "--epochs", "1", "--batch-size", "32", "--no-batch-norm",
         "--dropout", "0", "--hidden", "32", "16"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], cwd) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--max-restarts", "0",
           os.path.join(SCRIPTS, "train_mlp.py"), "--distributed", "--dist-timeout", "60", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"   # loopback only, whatever the hostname resolves to
    return subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=env, cwd=cwd)


def _result_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp_scripts")
    out = str(root / "ddp")
    first = torchrun([*EXACT, "--out", out, "--max-steps", "3"], root)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    first_rows = [json.loads(line) for line in open(os.path.join(out, "history.jsonl"))]
    second = torchrun([*EXACT, "--out", out, "--max-steps", "6", "--resume"], root)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    ref = str(root / "single")
    main = _script("train_mlp").main
    main([*EXACT, "--out", ref, "--max-steps", "3"])
    reference = main([*EXACT, "--out", ref, "--max-steps", "6", "--resume"])
    return {"out": out, "ref": ref, "procs": (first, second), "first_rows": first_rows, "reference": reference}


def test_only_rank_zero_prints_one_result_line_per_launch(runs):
    for proc in runs["procs"]:
        assert len(_result_lines(proc)) == 1, proc.stdout
        assert sum(line.startswith("epoch ") for line in proc.stdout.splitlines()) == 1, proc.stdout


def test_outputs_are_written_once_and_resume_continues_them(runs):
    out = runs["out"]
    assert [r["step"] for r in runs["first_rows"]] == [3]
    rows, ckpts = _outputs(out)
    assert [r["step"] for r in rows] == [3, 6]
    assert ckpts == ["ckpt_000000003.safetensors", "ckpt_000000006.safetensors"]
    assert json.load(open(os.path.join(out, "config.json")))["world_size"] == 2
    result = json.load(open(os.path.join(out, "result.json")))
    assert result["steps"] == 6
    assert _result_lines(runs["procs"][1])[0].startswith(f"RESULT test_acc={result['test_acc']:.4f}")


def test_parameters_equal_a_single_process_run_on_the_global_batches(runs):
    name = "ckpt_000000006.safetensors"
    got = checkpoint.load(os.path.join(runs["out"], "checkpoints", name))
    want = checkpoint.load(os.path.join(runs["ref"], "checkpoints", name))
    assert int(got.step) == int(want.step) == 6
    assert_trees_close(got.params, want.params, rtol=1e-5, atol=1e-6)
    assert_trees_close(got.opt_state, want.opt_state, rtol=1e-5, atol=1e-6)
    # Guards the oracle: the step-3 checkpoint (from the first launch) differs from step 6.
    early = checkpoint.load(os.path.join(runs["out"], "checkpoints", "ckpt_000000003.safetensors"))
    assert not tree.all_equal(early.params, got.params)


def test_averaged_metrics_and_sharded_evaluation_match_the_single_process(runs):
    rows, _ = _outputs(runs["out"])
    ref_rows, _ = _outputs(runs["ref"])
    for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        got, want = [r[name] for r in rows], [r[name] for r in ref_rows]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-5, atol=1e-5, msg=name)
    result = json.load(open(os.path.join(runs["out"], "result.json")))
    assert result["test_acc"] == pytest.approx(runs["reference"]["test_acc"], abs=1e-6)
    assert result["test_loss"] == pytest.approx(runs["reference"]["test_loss"], rel=1e-5)


def test_a_batch_size_the_world_size_does_not_divide_is_rejected(tmp_path):
    proc = torchrun([*EXACT, "--out", str(tmp_path / "odd"), "--batch-size", "33", "--max-steps", "1"], tmp_path)
    assert proc.returncode != 0
    assert "--batch-size 33 is the global batch: it must be divisible by the number of processes (2)" in proc.stderr
    assert not _result_lines(proc)


def _tiny_fit(**kw):
    from deepfn import losses, optim, random
    from deepfn.models import MLP
    from deepfn.train import TrainState, fit, make_eval_step, make_train_step
    model, opt = MLP(6, (8,), 3, dropout_rate=0.2, batch_norm=True), optim.adam(0.05)
    x = torch.linspace(-1, 1, 30 * 6).reshape(30, 6)
    y = (x[:, 0] > 0).long()
    step = make_train_step(model, losses.cross_entropy, opt, compile=False)
    return fit(step, TrainState.create(model, opt, random.key(1)), (x, y), epochs=2, batch_size=8,
               key=random.key(2), eval_step=make_eval_step(model, losses.cross_entropy, compile=False),
               val_data=(x, y), progress=False, **kw)


def test_fit_distributed_in_a_single_process_is_the_plain_loop():
    # Without torchrun the process is a world of one: same batches, keys and metrics.
    (got, got_history), (want, want_history) = _tiny_fit(distributed=True), _tiny_fit()
    assert tree.all_equal(got, want)
    drop = ("epoch_time", "eval_time", "samples_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in got_history.rows] == \
           [{k: v for k, v in r.items() if k not in drop} for r in want_history.rows]


def test_fit_rejects_a_distributed_flag_that_is_not_a_bool():
    with pytest.raises(TypeError, match="distributed must be a bool; got str"):
        _tiny_fit(distributed="yes")


def test_evaluate_rejects_a_distributed_flag_that_is_not_a_bool():
    from deepfn.train import evaluate
    data = (torch.zeros(4, 6), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(TypeError, match="distributed must be a bool; got int"):
        evaluate(lambda p, s, b: {"loss": torch.zeros(())}, {}, {}, data, 2, distributed=1)

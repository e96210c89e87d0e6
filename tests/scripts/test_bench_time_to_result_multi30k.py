"""scripts/bench_parts/time_to_result_multi30k.py and its plain-PyTorch job: the job's flags, loss
and updates against the script's (oracles), the part's knobs, commands and rows, and one tiny
end-to-end run through scripts/bench.py (no timings asserted)."""

from __future__ import annotations

import json
import os

import bench  # scripts/ is put on the path by conftest.py
import pytest
import torch
import train_transformer
from bench_parts import multi30k_torch_job as job
from bench_parts import time_to_result_multi30k as mt
from bench_parts._workload_models import Seq2SeqTransformer

from deepfn import amp, interop, losses, optim, random
from deepfn.models import Transformer
from deepfn.train import TrainState, make_train_step

PAD = train_transformer.PAD
SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "multi30k_sample")
TINY = "--limit 48 --vocab-size 300 --d-model 16 --n-heads 2 --n-layers 1 --d-ff 32 --max-len 16 --batch-size 16 --epochs 1 --beam-size 2"


def test_torch_job_flags_default_to_the_scripts():
    script, twin = train_transformer.build_parser().parse_args([]), job.build_parser().parse_args(["--out", "o"])
    for name in ("epochs", "patience", "time_budget_min", "batch_size", "lr", "warmup", "vocab_size", "max_len",
                 "d_model", "n_heads", "n_layers", "d_ff", "dropout", "beam_size", "amp", "compile", "limit"):
        assert getattr(twin, name) == getattr(script, name), name
    assert script.schedule == "noam" and script.length_buckets == 0 and not script.no_bucketing


def test_token_loss_is_the_scripts_label_smoothed_loss():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    labels[0, 2:] = PAD
    expected = losses.cross_entropy(logits, labels, label_smoothing=0.1, ignore_index=PAD)
    torch.testing.assert_close(job.token_loss(logits, labels), expected, rtol=1e-6, atol=1e-6)
    n = int((labels != PAD).sum())
    torch.testing.assert_close(job.token_loss(logits, labels, "sum") / n, expected, rtol=1e-6, atol=1e-6)


def test_torch_job_updates_like_the_scripts_train_step():
    # Adam + noam LambdaLR + clipping step for step against the script's eager step, dropout off.
    d_model, warmup, lr = 16, 3, 1e-3
    model = Transformer(vocab_size=40, d_model=d_model, n_heads=2, n_layers=1, d_ff=32, dropout=0.0,
                        max_seq_len=10, pad_token_id=PAD)
    schedule = optim.noam(d_model, warmup, factor=lr / (d_model ** -0.5 * warmup ** -0.5))
    opt = optim.adam(schedule, betas=(0.9, 0.98), eps=1e-9)
    loss_fn = lambda logits, labels: losses.cross_entropy(logits, labels, label_smoothing=0.1,  # noqa: E731
                                                          ignore_index=PAD)
    step = make_train_step(model, loss_fn, opt, clip_norm=1.0, compile=False, lr=schedule, ignore_index=PAD)
    ts = TrainState.create(model, opt, random.key(5))
    twin = interop.to_torch(model, ts.params, ts.state, Seq2SeqTransformer(model)).train()
    t_opt, t_schedule = job.make_optimizer(twin, d_model, warmup, lr)
    g = torch.Generator().manual_seed(1)
    for i in range(5):
        src, tgt = torch.randint(3, 40, (4, 7), generator=g), torch.randint(3, 40, (4, 6), generator=g)
        src[1, 5:], tgt[2, 4:] = PAD, PAD
        ts, metrics = step(ts, ((src, tgt[:, :-1]), tgt[:, 1:]), random.key(i))
        loss = job.train_step(twin, twin, t_opt, t_schedule, src, tgt[:, :-1], tgt[:, 1:], amp=False)
        torch.testing.assert_close(loss, metrics["loss"], rtol=1e-4, atol=1e-5)
    ours = interop.to_torch(model, ts.params, ts.state, Seq2SeqTransformer(model)).state_dict()
    for name, value in twin.state_dict().items():
        if not name.endswith("in_proj_bias"):
            torch.testing.assert_close(value, ours[name], rtol=1e-4, atol=1e-5, msg=name)
            continue
        # The key bias's gradient is 0 up to rounding (softmax ignores a shift shared by a row's
        # scores) and Adam scales rounding noise to steps of ~lr: after 5 updates it agrees to
        # 5 lr; the query and value biases as tightly as the rest.
        (q, k, v), (q_ref, k_ref, v_ref) = value.chunk(3), ours[name].chunk(3)
        torch.testing.assert_close(k, k_ref, rtol=0, atol=5 * lr, msg=name)
        torch.testing.assert_close(torch.cat([q, v]), torch.cat([q_ref, v_ref]), rtol=1e-4, atol=1e-5, msg=name)


def _env(tmp_path, **knobs):
    return {mt.DATA_ENV: str(tmp_path), **knobs}


def test_settings_need_a_data_folder_and_default_to_the_script(tmp_path):
    assert mt.settings(env={}) is None
    s = mt.settings(env=_env(tmp_path))
    assert s.data_dir == str(tmp_path) and s.seeds == (0,) and s.contenders == mt.CONTENDERS
    assert s.budget_min == 23.0 and s.extra == () and s.torch_backend == "inductor" and s.judged
    assert s.amp == bool(amp.bf16_in_hardware(torch.device("cpu")))
    assert mt.settings(quick=True, env=_env(tmp_path)).budget_min == 1.0
    s = mt.settings(env=_env(tmp_path, DEEPFN_BENCH_SEEDS="2,0", DEEPFN_BENCH_MT_CONTENDERS="torch-compile,eager",
                             DEEPFN_BENCH_MT_BUDGET_MIN="5", DEEPFN_BENCH_MT_AMP="0",
                             DEEPFN_BENCH_MT_ARGS="--limit 96 --d-model 32"))
    assert s.seeds == (2, 0) and s.contenders == ("eager", "torch-compile") and s.budget_min == 5.0
    assert not s.amp and s.extra == ("--limit", "96", "--d-model", "32") and not s.judged


@pytest.mark.parametrize("knob, value, message", [
    ("DEEPFN_BENCH_SEEDS", "a", "must be comma-separated ints"),
    ("DEEPFN_BENCH_SEEDS", "-1", "must hold ints >= 0"),
    ("DEEPFN_BENCH_MT_CONTENDERS", "eager,jax", "must be a comma-separated subset of"),
    ("DEEPFN_BENCH_MT_BUDGET_MIN", "soon", "must be a number of minutes"),
    ("DEEPFN_BENCH_MT_BUDGET_MIN", "0", "must be positive"),
    ("DEEPFN_BENCH_MT_AMP", "yes", "must be 0 or 1"),
])
def test_settings_reject_bad_knobs(tmp_path, knob, value, message):
    with pytest.raises(ValueError, match=f"{knob} {message}"):
        mt.settings(env=_env(tmp_path, **{knob: value}))


def test_settings_reject_a_data_dir_that_is_no_folder(tmp_path):
    with pytest.raises(ValueError, match="DEEPFN_BENCH_MULTI30K_DIR must be a folder"):
        mt.settings(env={mt.DATA_ENV: str(tmp_path / "missing")})


def test_commands_run_the_script_eager_compiled_and_the_torch_job(tmp_path):
    s = mt.settings(env=_env(tmp_path, DEEPFN_BENCH_MT_AMP="1", DEEPFN_BENCH_MT_BUDGET_MIN="7.5"))
    cold, eager, torch_job = (mt.command(c, 3, "OUT", s) for c in mt.CONTENDERS)
    for cmd in (cold, eager, torch_job):
        tail = " ".join(cmd[2:])
        assert f"--data-dir {tmp_path} --seed 3 --out OUT --time-budget-min 7.5 --amp" in tail
    assert cold[1] == eager[1] == str(mt.SCRIPT) and torch_job[1] == str(mt.TORCH_JOB)
    assert "--no-compile" in eager and "--no-compile" not in cold
    assert torch_job[-2:] == ["--compile-backend", "inductor"]
    with pytest.raises(ValueError, match="contender must be one of"):
        mt.command("flax", 0, "OUT", s)


def _seed(seed, walls, bleus):
    return {c: {"seed": seed, "wall_s": w, "test_bleu": b} for c, w, b in zip(mt.CONTENDERS, walls, bleus, strict=True)}


def test_rows_hold_medians_bleu_and_the_target(tmp_path):
    s = mt.settings(env=_env(tmp_path))
    per_seed = [_seed(0, (1400.0, 1410.0, 1420.0), (38.5, 30.0, 36.0)),
                _seed(1, (1450.0, 1390.0, 1430.0), (38.1, 31.0, 37.0)),
                _seed(2, (1600.0, 1400.0, 1440.0), (37.0, 32.0, 38.5))]
    rows = mt.rows(per_seed, s)
    assert [r["name"] for r in rows] == [f"multi30k translation: {c} vs {b}" for c, b in mt.COMPARISONS]
    cold_vs_eager, cold_vs_torch, eager_vs_torch = rows
    assert cold_vs_eager["deepfn_s"] == 1450.0 and cold_vs_eager["baseline_s"] == 1400.0
    assert cold_vs_eager["ratio"] == pytest.approx(1450.0 / 1400.0)
    assert cold_vs_eager["bleu_difference"] == pytest.approx(38.1 - 31.0)
    ours = cold_vs_eager["contender_figures"]
    assert ours["bleu_median"] == 38.1 and ours["bleu_range"] == [37.0, 38.5] and ours["target"] == "met"
    assert cold_vs_eager["baseline_figures"]["target"] == "missed"   # BLEU 31
    assert cold_vs_torch["baseline_figures"]["target"] == "missed"   # BLEU 37
    assert eager_vs_torch["deepfn_s"] == 1400.0 and "target: BLEU >= 38 in <= 25 min" in eager_vs_torch["note"]
    slow = [_seed(0, (1501.0, 1.0, 1.0), (40.0, 0.0, 0.0))]   # BLEU met, 25 min exceeded
    assert mt.rows(slow, s)[0]["contender_figures"]["target"] == "missed"
    smoke = mt.settings(env=_env(tmp_path, DEEPFN_BENCH_MT_ARGS="--limit 9"))
    assert mt.rows(per_seed, smoke)[0]["contender_figures"]["target"].startswith("not judged")
    assert len(mt.rows([{"eager": per_seed[0]["eager"]}], s)) == 0   # one contender: no comparison


def test_without_data_the_part_says_so(monkeypatch):
    monkeypatch.delenv(mt.DATA_ENV, raising=False)
    (row,) = mt.run()
    assert row["ratio"] is None and mt.DATA_ENV in row["note"]


def test_tiny_end_to_end_through_bench(tmp_path, monkeypatch):
    # One seed on the bundled sample: the script eager against the torch job under
    # torch.compile(backend="eager") (Dynamo without Inductor: no long compile in the tests).
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "previous-cache"))
    for knob, value in {mt.DATA_ENV: SAMPLE, "DEEPFN_BENCH_SEEDS": "0", mt.CONTENDERS_ENV: "eager,torch-compile",
                        mt.AMP_ENV: "0", mt.ARGS_ENV: TINY, "DEEPFN_BENCH_TTR_TORCH_BACKEND": "eager"}.items():
        monkeypatch.setenv(knob, value)
    assert bench.main(["--only", "time_to_result_multi30k", "--out", str(tmp_path), "--label", "mt", "--quick"]) == 0
    (row,) = json.loads((tmp_path / "mt.json").read_text())["rows"]
    assert row["name"] == "multi30k translation: eager vs torch-compile" and row["ratio"] > 0
    assert row["settings"]["budget_min"] == 1.0 and row["settings"]["extra"] == TINY.split()
    for figures in (row["contender_figures"], row["baseline_figures"]):
        (one,) = figures["runs"]
        assert one["wall_s"] > 0 and 0.0 <= one["test_bleu"] <= 100.0
        assert figures["target"].startswith("not judged")
    deepfn_history = [json.loads(line) for line in row["contender_figures"]["runs"][0]["history"].splitlines()]
    torch_history = json.loads(row["baseline_figures"]["runs"][0]["history"])["history"]
    assert len(deepfn_history) == len(torch_history) == 1
    assert torch_history[0]["steps"] == 3 and deepfn_history[0]["epoch"] == 1   # 48 pairs / batch 16

"""scripts/bench_parts/time_to_result.py and its plain-PyTorch job: the twin is deepfn's demo
(oracles: split, first forward, first updates), the rows' figures and targets, the knobs, and
one tiny end-to-end run through scripts/bench.py (no timings asserted)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys

import bench  # scripts/ is put on the path by conftest.py
import pytest
import torch
from bench_parts import demo_torch_job as job
from bench_parts import time_to_result as ttr

from deepfn import data, interop, losses, optim, random
from deepfn.train import TrainState, make_train_step

KEYS = ("group", "name", "deepfn_s", "baseline", "baseline_s", "ratio", "note")
SCRIPTS = os.path.dirname(os.path.dirname(os.path.abspath(job.__file__)))


def _train_cnn_defaults():
    spec = importlib.util.spec_from_file_location("script_train_cnn_ttr", os.path.join(SCRIPTS, "train_cnn.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser().parse_args([])


def test_torch_job_flags_default_to_the_demos():
    demo, twin = _train_cnn_defaults(), job.build_parser().parse_args([])
    for name in ("epochs", "batch_size", "lr", "weight_decay", "dropout", "smoothing", "limit"):
        assert getattr(twin, name) == getattr(demo, name), name
    assert demo.dataset == "digits" and demo.stem == "cifar" and demo.base_channels is None and demo.blocks is None


def test_torch_job_split_is_deepfns_digits_split():
    for (x, y), name in zip(job.digits_splits(), ("train", "val", "test"), strict=True):
        x_ref, y_ref = data.digits(name)
        torch.testing.assert_close(x, x_ref, rtol=0, atol=0)
        assert torch.equal(y, y_ref)
    (x, y), _, _ = job.digits_splits(limit=100)
    assert x.shape == (100, 1, 8, 8) and y.shape == (100,)


def _inputs(n=6):
    return data.digits("val")[0][:n]


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_torch_job_first_forward_equals_deepfns_on_the_same_weights(tmp_path, train):
    # Dropout off in train mode so both draw nothing; batch norm then uses the batch statistics.
    dropout = 0.0 if train else 0.2
    weights = tmp_path / "init.pt"
    torch.save(ttr.initial_weights(seed=3, dropout=dropout), weights)
    twin = job.build_model(dropout, str(weights)).train(train)
    model = ttr.demo_model(dropout)
    params, state = model.init(random.split(random.key(3))[0])
    expected, _ = model.apply(params, state, _inputs(), train=train)
    with torch.no_grad():
        torch.testing.assert_close(twin(_inputs()), expected, rtol=1e-5, atol=1e-5)


def test_torch_job_updates_like_deepfns_train_step():
    # AdamW + OneCycleLR step for step against deepfn's adamw(one_cycle) eager step, dropout off.
    total, lr, wd, seed = 6, 3e-3, 5e-4, 1
    model = ttr.demo_model(0.0)
    schedule = optim.one_cycle(lr, total)
    opt = optim.adamw(schedule, weight_decay=wd)
    step = make_train_step(model, losses.cross_entropy, opt, compile=False, lr=schedule)
    ts = TrainState.create(model, opt, random.split(random.key(seed))[0])
    twin = job.build_model(0.0)
    twin.load_state_dict(ttr.initial_weights(seed, dropout=0.0))
    t_opt, t_schedule = job.make_optimizer(twin, lr, wd, total)
    x, y = data.digits("train")
    for i in range(4):
        batch = (x[16 * i:16 * (i + 1)], y[16 * i:16 * (i + 1)])
        ts, metrics = step(ts, batch, random.key(i))
        loss = job.train_step(twin, t_opt, t_schedule, *batch)
        torch.testing.assert_close(loss, metrics["loss"], rtol=1e-4, atol=1e-5)
    # every weight and batch-norm running statistic after the updates
    ours = interop.to_torch(model, ts.params, ts.state, job.build_model(0.0)).state_dict()
    for name, value in twin.state_dict().items():
        torch.testing.assert_close(value, ours[name], rtol=1e-4, atol=1e-5, msg=name)


def _seed(seed, walls, accs):
    return {c: {"seed": seed, "wall_s": w, "test_acc": a, "script_wall_s": w - 5}
            for c, w, a in zip(ttr.CONTENDERS, walls, accs, strict=True)}


def test_rows_hold_medians_ranges_ratios_and_the_target():
    per_seed = [_seed(0, (50.0, 10.0, 100.0, 60.0), (0.991, 0.991, 0.993, 0.990)),
                _seed(1, (70.0, 12.0, 110.0, 80.0), (0.995, 0.995, 0.989, 0.980)),
                _seed(2, (66.0, 11.0, 90.0, 70.0), (0.985, 0.985, 0.996, 0.996))]
    rows = ttr.rows(per_seed)
    assert [r["name"] for r in rows] == [f"digits-cnn demo: {c} vs {b}" for c, b in ttr.COMPARISONS]
    assert [r["baseline"] for r in rows] == [ttr.LABELS[b] for _, b in ttr.COMPARISONS]
    cold_vs_eager, warm_vs_eager, cold_vs_torch, eager_vs_torch = rows
    for r in rows:
        assert all(k in r for k in KEYS) and r["group"] == "time_to_result"
        assert math.isclose(r["ratio"], r["deepfn_s"] / r["baseline_s"])
        assert r["ratio_range"][0] <= r["ratio_range"][1]
    assert cold_vs_eager["deepfn_s"] == 66.0 and cold_vs_eager["baseline_s"] == 100.0
    assert cold_vs_eager["ratio_range"] == pytest.approx([0.5, 66.0 / 90.0])   # paired by seed
    figures = cold_vs_eager["contender_figures"]
    assert figures["acc_median"] == 0.991 and figures["acc_range"] == [0.985, 0.995]
    assert figures["wall_range_s"] == [50.0, 70.0] and figures["seeds"] == [0, 1, 2]
    assert len(figures["runs"]) == 3
    # cold: 66/100 of eager's wall is over 0.60; warm: 11/100 with median acc 0.991 meets it
    assert cold_vs_eager["target"]["verdict"] == "missed" and not cold_vs_eager["target"]["wall_ok"]
    assert warm_vs_eager["target"]["verdict"] == "met" and "met" in warm_vs_eager["note"]
    assert "target" not in cold_vs_torch and "target" not in eager_vs_torch
    assert cold_vs_torch["baseline_s"] == 70.0 and eager_vs_torch["deepfn_s"] == 100.0
    assert "median of 3 seed(s)" in cold_vs_torch["note"]


def test_target_misses_on_accuracy_and_is_not_judged_off_the_demo_settings():
    per_seed = [_seed(0, (30.0, 10.0, 100.0, 60.0), (0.98, 0.98, 0.99, 0.99))]
    cold = ttr.rows(per_seed)[0]
    assert cold["target"]["wall_ok"] and not cold["target"]["acc_ok"] and cold["target"]["verdict"] == "missed"
    assert ttr.rows(per_seed, demo_settings=False)[0]["target"]["verdict"].startswith("not judged")


def test_rows_leave_out_comparisons_whose_contenders_did_not_run():
    per_seed = [{c: v for c, v in _seed(0, (1.0, 1.0, 2.0, 3.0), (0.5,) * 4).items() if c in ("eager", "torch-compile")}]
    assert [(r["contender"], r["baseline"]) for r in ttr.rows(per_seed)] == [
        (ttr.LABELS["eager"], ttr.LABELS["torch-compile"])]


def test_settings_defaults_and_quick():
    s = ttr.settings(env={})
    assert s.seeds == (0, 1, 2, 3, 4) and s.contenders == ttr.CONTENDERS and s.demo_settings
    quick = ttr.settings(quick=True, env={})
    assert quick.seeds == (0,) and quick.epochs == ttr.QUICK_EPOCHS and not quick.demo_settings
    s = ttr.settings(env={ttr.SEEDS_ENV: "3,7", ttr.CONTENDERS_ENV: "torch-compile,eager", ttr.LIMIT_ENV: "256"})
    assert s.seeds == (3, 7) and s.contenders == ("eager", "torch-compile") and s.limit == 256


@pytest.mark.parametrize("knob, value, match", [
    (ttr.SEEDS_ENV, "0,x", "comma-separated ints"),
    (ttr.SEEDS_ENV, "-1", "ints >= 0"),
    (ttr.SEEDS_ENV, "1,1", "must not repeat"),
    (ttr.CONTENDERS_ENV, "eager,jax", "subset of"),
    (ttr.CONTENDERS_ENV, "compiled-warm,eager", "needs compiled-cold"),
    (ttr.EPOCHS_ENV, "0", "ints >= 1"),
    (ttr.LIMIT_ENV, "many", "comma-separated ints"),
], ids=["seed-not-int", "seed-negative", "seed-repeated", "contender-unknown", "warm-without-cold",
        "epochs-zero", "limit-not-int"])
def test_settings_reject_bad_knobs(knob, value, match):
    with pytest.raises(ValueError, match=match) as err:
        ttr.settings(env={knob: value})
    assert knob in str(err.value)


def test_commands_run_the_demo_and_the_torch_job():
    s = ttr.Settings(seeds=(0,), contenders=ttr.CONTENDERS, epochs=2, limit=300, torch_backend="eager")
    cold = ttr.command("compiled-cold", 4, "OUT", s)
    assert cold[1].endswith("train_cnn.py") and "--no-compile" not in cold
    assert cold[cold.index("--seed") + 1] == "4" and cold[cold.index("--epochs") + 1] == "2"
    assert ttr.command("compiled-warm", 4, "OUT", s) == cold
    assert "--no-compile" in ttr.command("eager", 4, "OUT", s)
    twin = ttr.command("torch-compile", 4, "OUT", s, "W.pt")
    assert twin[1].endswith("demo_torch_job.py") and twin[twin.index("--init-weights") + 1] == "W.pt"
    assert twin[twin.index("--compile-backend") + 1] == "eager" and twin[twin.index("--limit") + 1] == "300"
    with pytest.raises(ValueError, match="contender must be one of"):
        ttr.command("jax", 0, "OUT", s)


def test_run_seed_reruns_the_cold_folders_warm_and_gives_the_others_fresh_ones(tmp_path, monkeypatch):
    calls = []

    def fake_job(cmd, cache_dir):
        out = cmd[cmd.index("--out") + 1]
        calls.append((cmd, out, cache_dir))
        if "--init-weights" in cmd:
            assert os.path.isfile(cmd[cmd.index("--init-weights") + 1])
        if len(calls) == 1:   # the cold run saves its steps; the warm run finds them
            os.makedirs(os.path.join(out, "compiled-steps"))
            open(os.path.join(out, "compiled-steps", "step.bin"), "w").close()
        return {"wall_s": 1.0, "test_acc": 0.5, "script_wall_s": 0.5}

    monkeypatch.setattr(ttr, "run_job", fake_job)
    figures = ttr.run_seed(2, ttr.settings(env={ttr.SEEDS_ENV: "2"}), str(tmp_path))
    assert list(figures) == list(ttr.CONTENDERS) and all(f["seed"] == 2 for f in figures.values())
    assert (figures["compiled-cold"]["saved_steps"], figures["compiled-cold"]["saved_steps_written"]) == (1, 1)
    assert (figures["compiled-warm"]["saved_steps"], figures["compiled-warm"]["saved_steps_written"]) == (1, 0)
    assert "saved_steps" not in figures["eager"]
    (_, cold_out, cold_cache), (_, warm_out, warm_cache), (_, eager_out, eager_cache), (_, torch_out, torch_cache) = calls
    assert (warm_out, warm_cache) == (cold_out, cold_cache)
    assert len({cold_out, eager_out, torch_out}) == 3 and len({cold_cache, eager_cache, torch_cache}) == 3
    assert list(tmp_path.iterdir()) == []   # the seed's folders are removed


def test_parse_result_reads_the_last_result_line_and_rejects_none():
    figures = ttr.parse_result("epoch 1\nRESULT test_acc=0.5 wall_s=1.0\nRESULT test_acc=0.9900 wall_s=12.5\n")
    assert figures == {"test_acc": 0.99, "wall_s": 12.5}
    with pytest.raises(ValueError, match="no RESULT line"):
        ttr.parse_result("Traceback ...\n")


def test_run_job_reports_a_failed_job(tmp_path):
    with pytest.raises(RuntimeError, match="exited with 3"):
        ttr.run_job([sys.executable, "-c", "import sys; sys.exit(3)"], str(tmp_path))


def test_run_job_rejects_an_accuracy_outside_0_1(tmp_path):
    with pytest.raises(ValueError, match=r"test_acc must be a number in \[0, 1\]"):
        ttr.run_job([sys.executable, "-c", "print('RESULT test_acc=1.5 wall_s=1')"], str(tmp_path))


def test_tiny_end_to_end_through_bench(tmp_path, monkeypatch):
    # One seed, one epoch of 4 updates on 256 images; deepfn eager against the torch job under
    # torch.compile(backend="eager") (Dynamo without Inductor: no long compile in the tests).
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "previous-cache"))
    monkeypatch.delenv("DEEPFN_BENCH_COLD_CACHES", raising=False)
    for knob, value in {ttr.SEEDS_ENV: "0", ttr.CONTENDERS_ENV: "eager,torch-compile", ttr.EPOCHS_ENV: "1",
                        ttr.LIMIT_ENV: "256", ttr.BACKEND_ENV: "eager"}.items():
        monkeypatch.setenv(knob, value)
    assert bench.main(["--only", "time_to_result", "--out", str(tmp_path), "--label", "ttr"]) == 0
    payload = json.loads((tmp_path / "ttr.json").read_text())
    (row,) = payload["rows"]
    assert all(k in row for k in KEYS) and row["name"] == "digits-cnn demo: eager vs torch-compile"
    assert row["settings"] == {"seeds": [0], "epochs": 1, "limit": 256, "torch_backend": "eager"}
    assert row["baseline"] == ttr.LABELS["torch-compile"] and row["ratio"] > 0
    for figures in (row["contender_figures"], row["baseline_figures"]):
        (one,) = figures["runs"]
        assert one["seed"] == 0 and one["wall_s"] > 0 and one["script_wall_s"] > 0
        assert isinstance(one["test_acc"], float) and 0.0 <= one["test_acc"] <= 1.0
        assert figures["acc_median"] == one["test_acc"] and figures["wall_range_s"] == [one["wall_s"]] * 2
    assert "| time_to_result | digits-cnn demo: eager vs torch-compile |" in (tmp_path / "ttr.md").read_text()

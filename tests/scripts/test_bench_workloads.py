"""Smoke tests of scripts/bench_parts/workloads.py: twins, row format, selection (no timings asserted)."""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time

import pytest
import torch
from bench_parts import _timing as T
from bench_parts import workloads as W
from bench_parts._workload_models import Seq2SeqTransformer, SEResNet, torch_mlp

from deepfn import interop, optim, random
from deepfn.models import MLP, AdvancedCNN, Transformer

KEYS = ("group", "name", "deepfn_s", "baseline", "baseline_s", "ratio", "note")


def _inputs(model, g):
    if isinstance(model, MLP):
        return (torch.randn(6, model.input_dim, generator=g),)
    if isinstance(model, AdvancedCNN):
        return (torch.randn(2, 3, 32, 32, generator=g),)
    # includes pad ids (0) so that the mask conventions are exercised
    return (torch.randint(0, 50, (3, 7), generator=g), torch.randint(1, 50, (3, 5), generator=g))


@pytest.mark.parametrize("model, make_twin", [
    (MLP(10, (64, 32, 16), 5, dropout_rate=0.2, batch_norm=True), torch_mlp),
    (AdvancedCNN(3, 10, 16, (1, 1, 1, 1)), SEResNet),
    (AdvancedCNN(3, 10, 16, (1, 2, 1, 1), stem="cifar"), SEResNet),
    (Transformer(50, 32, 4, 2, 64), Seq2SeqTransformer),
], ids=["mlp", "cnn", "cnn-cifar", "transformer"])
def test_twin_matches_deepfn_with_same_weights(model, make_twin):
    params, state = model.init(random.key(3))
    twin = interop.to_torch(model, params, state, make_twin(model)).eval()
    inputs = _inputs(model, torch.Generator().manual_seed(0))
    expected, _ = model.apply(params, state, *inputs)
    torch.testing.assert_close(twin(*inputs), expected, rtol=1e-5, atol=1e-5)


def test_twin_rejects_configs_it_cannot_mirror():
    with pytest.raises(ValueError, match="SEResNet"):
        SEResNet(AdvancedCNN(use_attention=False))
    with pytest.raises(ValueError, match="Seq2SeqTransformer"):
        Seq2SeqTransformer(Transformer(100, 32, 4, 1, 64, norm_first=True))


def test_contenders_train_the_same_trajectory():
    # Same initial weights, optimizer and clipping: the losses agree step by step (no dropout).
    wl = W.Workload("tiny", MLP(20, (32, 16), 4, batch_norm=True), 16, 2,
                    lambda: optim.adam(lr=1e-2, weight_decay=1e-4),
                    lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-4), clip=0.5, in_shape=(20,))
    ours, theirs = W.deepfn_runner(wl, compile=False), W.torch_runner(wl, compile=False)
    for _ in range(4):
        torch.testing.assert_close(ours(), theirs(), rtol=1e-4, atol=1e-5)


def test_step_flops_of_mlp_seed_equal_the_matmul_count():
    sizes, b = [(10, 64), (64, 32), (32, 16), (16, 5)], 32
    forward = sum(2 * b * i * o for i, o in sizes)
    # backward: weight and input grads of every layer, except the input grad of the first.
    assert W.step_flops(W.WORKLOADS["mlp-seed"]) == 3 * forward - 2 * b * 10 * 64


def test_eager_rows_have_the_runner_format(monkeypatch):
    readings = iter([5e9, 1e10])    # the peak before the timings, then after: the higher one counts
    monkeypatch.setattr(W, "matmul_peak", lambda dtype: next(readings))
    rows = W.bench_workload(W.WORKLOADS["mlp-seed"], 2, contenders=("eager", "bf16"))
    assert len(rows) == 1                      # bf16 rows are for the CNN and Transformer only
    (row,) = rows
    assert all(k in row for k in KEYS)
    assert row["group"] == "workloads" and "mlp-seed" in row["name"]
    assert row["deepfn_s"] > 0 and row["baseline_s"] > 0
    assert math.isclose(row["ratio"], row["deepfn_s"] / row["baseline_s"])
    assert row["min_s"] <= row["deepfn_s"] and row["baseline_min_s"] <= row["baseline_s"]
    assert math.isclose(row["samples_s"], 32 / row["deepfn_s"])
    assert math.isclose(row["gflops"], row["step_gflop"] / row["deepfn_s"])
    assert row["peak_gflops"] == 10.0 and row["peak_share"] == pytest.approx(row["gflops"] * 1e9 / 1e10)
    assert row["rss_mib"] > 0 and row["compile_s"] > 0


def test_jax_row_is_skipped_with_a_note_when_jax_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", None)    # makes `import jax` raise ImportError
    (row,) = W.bench_workload(W.WORKLOADS["mlp-seed"], 2, contenders=("jax",))
    assert all(k in row for k in KEYS)
    assert row["baseline_s"] is None and row["ratio"] is None and "jax not installed" in row["note"]


def test_selection_quick_env_and_only(monkeypatch):
    monkeypatch.delenv(W.ENV, raising=False)
    assert W.selected(True) == ["mlp-seed", "mlp-wide", "cnn-small", "transformer-small"]
    assert set(W.selected(False)) == set(W.WORKLOADS) and "cnn-seed" in W.selected(False)
    monkeypatch.setenv(W.ENV, "cnn-seed, transformer-seed")
    assert W.selected(True) == ["cnn-seed", "transformer-seed"]
    assert W.selected(False, only="mlp-wide") == ["mlp-wide"]


def test_selection_rejects_unknown_workloads():
    with pytest.raises(ValueError, match="unknown workload.*resnet-50"):
        W.selected(False, only="mlp-seed,resnet-50")


def test_each_compiled_contender_compiles_into_a_fresh_cache(monkeypatch, tmp_path):
    # Identical kernels compiled by an earlier contender must not shorten a later one's cold
    # compile; the warm start then reads the cache its own cold run filled.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "first"))
    monkeypatch.setenv(T.COLD_ENV, "1")
    make = lambda: (lambda: None)  # noqa: E731
    cold = T.start(make, True).cache_dir
    assert cold not in (None, str(tmp_path / "first")) and os.environ["TORCHINDUCTOR_CACHE_DIR"] == cold
    second = T.start(make, True).cache_dir
    assert second != cold
    T.warm_start(make, cold)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == cold       # the first contender's own cache
    assert T.start(make, False).cache_dir is None                # eager contenders leave the cache alone
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == cold
    monkeypatch.delenv(T.COLD_ENV)
    assert T.start(make, True).cache_dir == cold                 # --keep-compile-cache: one cache throughout


def test_contenders_are_timed_in_turns():
    calls = []
    a = T.Contender(lambda: calls.append("a"))
    b = T.Contender(lambda: (calls.append("b"), time.sleep(0.005)))
    T.time_interleaved([a, b], steps=7, blocks=3)
    # three turns each of 3, 2, 2 timed calls, every turn opened by one untimed call
    assert "".join(calls) == "a" * 4 + "b" * 4 + "a" * 3 + "b" * 3 + "a" * 3 + "b" * 3
    for c in (a, b):
        assert c.figures["min_s"] <= c.figures["median_s"] and c.figures["rss_mib"] > 0
    assert b.figures["min_s"] >= 0.005                           # each contender's own calls are timed
    with pytest.raises(ValueError, match="steps must be >= 1; got 0"):
        T.time_interleaved([a], steps=0)


def test_sync_runs_before_every_timed_call_only():
    calls = []
    a, b = T.Contender(lambda: calls.append("a")), T.Contender(lambda: calls.append("b"))
    T.time_interleaved([a, b], steps=2, blocks=2, sync=lambda: calls.append("|"))
    assert "".join(calls) == "a|a" + "b|b" + "a|a" + "b|b"


def test_start_times_the_first_call_and_warms_up_once():
    calls = []
    c = T.start(lambda: (lambda: (calls.append(1), time.sleep(0.01 if len(calls) == 1 else 0))), False)
    assert len(calls) == 2 and c.figures["first_s"] >= 0.01 and c.figures["cache_hits"] == 0
    assert "compile_phases" not in c.figures


def test_contender_selection_from_the_environment(monkeypatch):
    monkeypatch.delenv(W.CONTENDERS_ENV, raising=False)
    assert W.selected_contenders() == ("eager", "compiled", "bf16", "jax")
    monkeypatch.setenv(W.CONTENDERS_ENV, "compiled, jax")
    assert W.selected_contenders() == ("compiled", "jax")
    monkeypatch.setenv(W.CONTENDERS_ENV, "compiled,xla")
    with pytest.raises(ValueError, match="unknown contender.*xla"):
        W.selected_contenders()


def test_bench_device_from_the_environment(monkeypatch):
    monkeypatch.delenv(W.DEVICE_ENV, raising=False)
    assert W.bench_device() == torch.device("cpu")
    step = lambda: 1  # noqa: E731
    assert W.synchronized(step, torch.device("cpu")) is step   # no synchronization on the CPU
    if not torch.cuda.is_available():
        monkeypatch.setenv(W.DEVICE_ENV, "cuda")
        with pytest.raises(RuntimeError, match="DEEPFN_BENCH_DEVICE=cuda: CUDA is not available"):
            W.bench_device()
    monkeypatch.setenv(W.DEVICE_ENV, "meta")   # any other device: inputs, twin and train state go there
    wl = W.WORKLOADS["mlp-seed"]
    (x,), y = W.make_batch(wl)
    assert x.device.type == y.device.type == "meta"
    assert all(p.device.type == "meta" for p in W.twin_of(wl).parameters())


def test_matmul_peak_takes_one_product_of_a_type_the_processor_emulates(monkeypatch):
    calls = []
    clock = iter(range(0, 1000, 3))   # every product "takes" 3 s
    monkeypatch.setattr(W.time, "perf_counter", lambda: float(next(clock)))
    monkeypatch.setattr(W.torch, "mm", lambda a, b: calls.append(1))
    assert W.matmul_peak(torch.float32, n=4) == 2 * 4 ** 3 / 3.0
    assert len(calls) == 1


@pytest.mark.slow
def test_quick_run_of_mlp_seed_with_every_contender():
    rows = W.run(quick=True, only="mlp-seed")
    assert {r["name"].split("(")[1].rstrip(")") for r in rows} == {"eager fp32", "compiled fp32", "compiled vs jax"}
    assert all(all(k in r for k in KEYS) for r in rows)
    compiled = next(r for r in rows if r["name"].endswith("(compiled fp32)"))
    assert compiled["warm_start_s"] > 0 and compiled["baseline_warm_start_s"] > 0 and compiled["saved_start_s"] > 0
    assert "warm start (deepfn / baseline)" in compiled["note"] and "compile_cache" in compiled["note"]


def test_opacus_row_is_skipped_with_a_note_when_opacus_is_missing(monkeypatch):
    from bench_parts import train as bench_train
    monkeypatch.setitem(sys.modules, "opacus", None)
    row = bench_train._per_example_vs_opacus(1)
    assert row["baseline_s"] is None and row["ratio"] is None and "opacus not installed" in row["note"]


@pytest.mark.skipif(not W.jax_available(), reason="the bench extra (jax, flax, optax) is not installed")
@pytest.mark.parametrize("model, extra", [(AdvancedCNN(3, 10, 4, (1, 1, 1, 1)), dict(in_shape=(3, 16, 16))),
                                          (Transformer(50, 16, 2, 1, 32), dict(seq_len=6))], ids=["cnn", "transformer"])
def test_flax_contenders_train(model, extra):
    import dataclasses
    base = W.WORKLOADS["cnn-small" if isinstance(model, AdvancedCNN) else "transformer-small"]
    wl = dataclasses.replace(base, model=model, batch=4, **extra)
    one_step = W.flax_runner(wl)
    losses = [float(one_step()) for _ in range(3)]
    assert all(math.isfinite(v) for v in losses)


def test_distributed_bench_runs_two_ranks():
    from bench_parts import distributed as bench_distributed
    rows = bench_distributed.run(quick=True)
    assert [r["group"] for r in rows] == ["distributed"] * 3
    assert all(r["ratio"] > 0 and r["deepfn_s"] > 0 for r in rows)

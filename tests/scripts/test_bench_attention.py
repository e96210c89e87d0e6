"""Smoke test of scripts/bench_parts/attention.py in quick mode: the rows it reports (no timings asserted)."""

from __future__ import annotations

from bench_parts import attention  # scripts/ is put on the path by conftest.py


def test_quick_run_reports_every_comparison():
    rows = attention.run(quick=True)
    names = [r["name"] for r in rows]
    assert len(rows) == 6
    assert sum("fwd+bwd" in n for n in names) == 4
    assert any(n.startswith("mha ensemble of 4 vmap(grad)") for n in names)
    assert any(n.startswith("mha per-example grads vmap(grad)") for n in names)
    for r in rows:
        assert r["group"] == "attention" and r["deepfn_s"] > 0 and r["baseline_s"] > 0
        assert r["ratio"] == r["deepfn_s"] / r["baseline_s"]

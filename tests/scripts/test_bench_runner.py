"""scripts/bench.py: the runner's files, labels and failure handling (parts replaced by stubs)."""

import json
import os
from pathlib import Path

import bench  # scripts/ is put on the path by conftest.py
import pytest

ROW = {"group": "optim", "name": "update", "deepfn_s": 0.002, "baseline": "torch", "baseline_s": 0.004,
       "ratio": 0.5, "note": "stub"}


@pytest.fixture
def stub_parts(monkeypatch, tmp_path):
    # main() points Inductor at a fresh cache through the environment: restored after each test.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "previous-cache"))
    monkeypatch.delenv("DEEPFN_BENCH_COLD_CACHES", raising=False)
    ran = []

    def run_group(group, quick):
        ran.append((group, quick))
        return [dict(ROW, group=group)]
    monkeypatch.setattr(bench, "run_group", run_group)
    return ran


def test_writes_json_and_markdown_named_by_label(tmp_path, stub_parts):
    assert bench.main(["--only", "optim", "--quick", "--out", str(tmp_path), "--label", "optim-here"]) == 0
    payload = json.loads((tmp_path / "optim-here.json").read_text())
    assert stub_parts == [("optim", True)]
    assert payload["rows"] == [ROW] and payload["groups"] == ["optim"] and payload["quick"] is True
    assert {"platform", "cpu_model", "cpu_count", "torch", "torch_threads", "date"} <= set(payload["machine"])
    assert "| optim | update |" in (tmp_path / "optim-here.md").read_text()


def test_default_label_is_the_groups_run(tmp_path, stub_parts):
    bench.main(["--only", "optim", "random", "--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optim-random.json", "optim-random.md"]


def test_compile_times_are_cold_unless_the_cache_is_kept(tmp_path, stub_parts):
    bench.main(["--only", "optim", "--out", str(tmp_path), "--keep-compile-cache"])
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "previous-cache")
    assert "DEEPFN_BENCH_COLD_CACHES" not in os.environ
    bench.main(["--only", "optim", "--out", str(tmp_path)])
    assert os.environ["DEEPFN_BENCH_COLD_CACHES"] == "1"
    fresh = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    assert fresh != tmp_path / "previous-cache" and fresh.is_dir() and not any(fresh.iterdir())
    fresh.rmdir()


def test_a_failed_part_makes_the_exit_status_nonzero(tmp_path, monkeypatch, stub_parts):
    def broken(group, quick):
        return [{"group": group, "name": "FAILED", "deepfn_s": None, "baseline": None, "baseline_s": None,
                 "ratio": None, "note": "RuntimeError: boom"}]
    monkeypatch.setattr(bench, "run_group", broken)
    assert bench.main(["--only", "optim", "--out", str(tmp_path)]) == 1


def test_unknown_group_is_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--only", "resnet", "--out", str(tmp_path)])
    assert "invalid choice: 'resnet'" in capsys.readouterr().err

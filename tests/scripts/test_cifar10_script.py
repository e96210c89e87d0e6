"""``make cifar10`` end to end, offline: the Makefile's command, with a tiny budget, downloads a
small archive in CIFAR-10's format through torchvision (served locally), trains one epoch and
reports a test accuracy."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from tests.data.cifar10_fake import CLS, fake_archive
from tests.data.local_server import serving
from tests.scripts.test_scripts import TINY, _outputs, _script

MAKEFILE = Path(__file__).resolve().parents[2] / "Makefile"
SMALL = ["--batch-size", "8", "--base-channels", "4", "--blocks", "1", "1", "1", "1", "--val-size", "4"]


def _make_target_args(target: str) -> list[str]:
    """The arguments that the Makefile's ``target`` passes to its script."""
    lines = MAKEFILE.read_text().splitlines()
    recipe = lines[lines.index(next(line for line in lines if line.startswith(f"{target}:"))) + 1]
    words = shlex.split(recipe)
    return words[words.index(next(w for w in words if w.endswith(".py"))) + 1:]


def test_make_cifar10_downloads_and_trains(tmp_path, monkeypatch):
    args = _make_target_args("cifar10")
    assert {"--dataset", "cifar10", "--download", "--augment"} <= set(args)
    served = tmp_path / "served"
    served.mkdir()
    # five training batch files of 10 images: 46 left after 4 for validation, 5 steps of 8
    for name, value in fake_archive(served, per_batch=10).items():
        monkeypatch.setattr(CLS, name, value)
    monkeypatch.setenv("DEEPFN_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "run"
    with serving(served) as (server, url):
        monkeypatch.setattr(CLS, "url", url + CLS.filename)
        result = _script("train_cnn").main([*args, *TINY, *SMALL, "--out", str(out)])
        assert "/" + CLS.filename in server.requests
    assert (tmp_path / "data" / "cifar10" / CLS.base_folder / "test_batch").is_file()
    rows, ckpts = _outputs(str(out))
    assert len(rows) == 1 and ckpts
    assert 0.0 <= result["test_acc"] <= 1.0 and result["steps"] == 46 // 8
    assert json.loads((out / "result.json").read_text())["test_acc"] == result["test_acc"]


def test_val_size_beyond_the_training_set(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    for name, value in fake_archive(served, per_batch=2).items():
        monkeypatch.setattr(CLS, name, value)
    with serving(served) as (_, url):
        monkeypatch.setattr(CLS, "url", url + CLS.filename)
        try:
            _script("train_cnn").main(["--dataset", "cifar10", "--download", "--data-dir", str(tmp_path / "d"),
                                       *TINY, *SMALL[:-2], "--val-size", "10", "--out", str(tmp_path / "run")])
        except ValueError as err:
            assert "--val-size must be between 1 and 9 (the training set holds 10 images); got 10" in str(err)
        else:
            raise AssertionError("--val-size 10 of 10 images was accepted")

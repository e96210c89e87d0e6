"""The scripts feed their steps a few fixed shapes, or (the Transformer) sizes its steps take as
symbols: every input signature is met in the first epoch, so compiled steps (one compile per
signature) never compile again.

Run eagerly (``--no-compile``): the history's signature counts are the compiles a compiled
run would make (tests/scripts/test_scripts.py's compiled MLP run checks that count against
the saved steps)."""

import json
import os

from .test_scripts import TINY_TRANSFORMER, _script

FLAGS = ["--no-compile", "--no-progress", "--epochs", "2", "--batch-size", "32"]


def _rows(out):
    return [json.loads(line) for line in open(os.path.join(out, "history.jsonl"))]


def test_mlp_compiles_in_the_first_epoch_only(tmp_path):
    out = str(tmp_path / "mlp")
    _script("train_mlp").main([*FLAGS, "--out", out, "--hidden", "8"])
    rows = _rows(out)
    assert [r["train_new_signatures"] for r in rows] == [1, 0]
    assert [r["eval_new_signatures"] for r in rows] == [1, 0]   # 270 validation rows padded to 512


def test_cnn_compiles_in_the_first_epoch_only(tmp_path):
    out = str(tmp_path / "cnn")
    _script("train_cnn").main([*FLAGS, "--out", out, "--limit", "96", "--base-channels", "4"])
    rows = _rows(out)
    assert [r["train_new_signatures"] for r in rows] == [1, 0]
    assert [r["eval_new_signatures"] for r in rows] == [1, 0]


def test_transformer_length_buckets_compile_in_the_first_epoch_only(tmp_path):
    out = str(tmp_path / "tr")
    args = [*FLAGS, "--out", out, *TINY_TRANSFORMER, "--length-buckets", "2", "--epochs", "3"]
    _script("train_transformer").main(args)
    rows = _rows(out)
    # Widths 8 and 16: at most two train shapes and two eval shapes (the 96 validation rows are
    # one batch, padded to 128 rows), all met in epoch 1.
    assert 1 <= rows[0]["train_new_signatures"] <= 2 and 1 <= rows[0]["eval_new_signatures"] <= 2
    assert [r["train_new_signatures"] for r in rows[1:]] == [0, 0]
    assert [r["eval_new_signatures"] for r in rows[1:]] == [0, 0]


def test_transformer_exact_widths_compile_once(tmp_path):
    """The default: every batch at its own widths, which the steps take as symbols
    (``dynamic_dims=(1,)``): one signature each for every width."""
    out = str(tmp_path / "tr")
    args = [*FLAGS, "--out", out, *TINY_TRANSFORMER, "--epochs", "3"]
    _script("train_transformer").main(args)
    rows = _rows(out)
    assert [r["train_new_signatures"] for r in rows] == [1, 0, 0]
    assert [r["eval_new_signatures"] for r in rows] == [1, 0, 0]

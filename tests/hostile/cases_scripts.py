"""Hostile flags of every script: each must stop argparse's way (exit 2, "argument --flag: ...").

A case is ``(id, script, argv, match)``; ``argv`` is parsed in-process by the script's own
parser (``build_parser``), or run through ``main(argv)`` when the check needs the data (the
batch size against the training set) or other flags (``--n-heads`` against ``--d-model``).
"""

from __future__ import annotations

from typing import NamedTuple


class FlagCase(NamedTuple):
    id: str
    script: str
    argv: list[str]
    match: str
    main: bool = False   # run main(argv) (with --out in a temporary folder), not only the parser


def _flag(script: str, flag: str, value: str, match: str, *extra: str) -> FlagCase:
    return FlagCase(f"{script} {flag} {value}", script, [*extra, flag, value], rf"argument {flag}: {match}")


_POS_INT = r"must be a positive int; got {}"
_POS_FLOAT = r"must be a finite number > 0; got {}"
_FINITE = r"must be a finite number; got {}"
_INT = r"must be an int; got {}"

COMMON = [   # the flags every script shares, through train_mlp's parser (one parser builds them all)
    _flag("train_mlp", "--batch-size", "0", _POS_INT.format(0)),
    _flag("train_mlp", "--batch-size", "-8", _POS_INT.format(-8)),
    _flag("train_mlp", "--batch-size", "1.5", _INT.format(r"1\.5")),
    _flag("train_mlp", "--epochs", "0", _POS_INT.format(0)),
    _flag("train_mlp", "--epochs", "-1", _POS_INT.format(-1)),
    _flag("train_mlp", "--lr", "inf", _FINITE.format("inf")),
    _flag("train_mlp", "--lr", "nan", _FINITE.format("nan")),
    _flag("train_mlp", "--lr", "-0.001", _POS_FLOAT.format(r"-0\.001")),
    _flag("train_mlp", "--lr", "0", _POS_FLOAT.format(0)),
    _flag("train_mlp", "--lr", "fast", r"must be a number; got fast"),
    _flag("train_mlp", "--device", "foo", r"must be a torch device such as cpu, cuda or cuda:0; got foo"),
    _flag("train_mlp", "--device", "cuda:99", r"(CUDA is not available here|this machine has \d+ CUDA device).*cuda:99"),
    _flag("train_mlp", "--device", "meta", r"must be cpu, cuda, cuda:N or mps \(a device to train on\); got meta"),
    _flag("train_mlp", "--seed", "-1", r"must be an int in \[0, 2\*\*64\); got -1"),
    _flag("train_mlp", "--seed", "seven", _INT.format("seven")),
    _flag("train_mlp", "--patience", "0", _POS_INT.format(0)),
    _flag("train_mlp", "--max-steps", "0", _POS_INT.format(0)),
    _flag("train_mlp", "--dist-timeout", "0", _POS_FLOAT.format(0)),
    _flag("train_mlp", "--dist-timeout", "inf", _FINITE.format("inf")),
]

SPECIFIC = [
    _flag("train_mlp", "--hidden", "0", _POS_INT.format(0)),
    _flag("train_mlp", "--dropout", "1", r"must be a number in \[0, 1\); got 1"),
    _flag("train_mlp", "--dropout", "-0.2", r"must be a number in \[0, 1\); got -0\.2"),
    _flag("train_mlp", "--weight-decay", "-0.0001", r"must be a finite number >= 0; got -0\.0001"),
    _flag("train_cnn", "--val-size", "0", _POS_INT.format(0)),
    _flag("train_cnn", "--limit", "0", _POS_INT.format(0)),
    _flag("train_cnn", "--base-channels", "0", _POS_INT.format(0)),
    FlagCase("train_cnn --blocks 1 1 0 1", "train_cnn", ["--blocks", "1", "1", "0", "1"],
             r"argument --blocks: must be a positive int; got 0"),
    _flag("train_cnn", "--dropout", "1.5", r"must be a number in \[0, 1\); got 1\.5"),
    _flag("train_cnn", "--weight-decay", "nan", _FINITE.format("nan")),
    _flag("train_cnn", "--accumulation-steps", "0", _POS_INT.format(0)),
    _flag("train_cnn", "--clip-norm", "0", _POS_FLOAT.format(0)),
    _flag("train_cnn", "--clip-norm", "-1", _POS_FLOAT.format(-1)),
    _flag("train_ensemble", "--members", "0", _POS_INT.format(0)),
    _flag("train_ensemble", "--hidden", "-4", _POS_INT.format(-4)),
    _flag("train_ensemble", "--dropout", "1", r"must be a number in \[0, 1\); got 1"),
    _flag("train_ensemble", "--bins", "0", _POS_INT.format(0)),
    _flag("train_transformer", "--time-budget-min", "0", _POS_FLOAT.format(0)),
    _flag("train_transformer", "--limit", "0", _POS_INT.format(0)),
    _flag("train_transformer", "--vocab-size", "0", _POS_INT.format(0)),
    _flag("train_transformer", "--max-len", "0", _POS_INT.format(0)),
    _flag("train_transformer", "--d-model", "0", _POS_INT.format(0)),
    _flag("train_transformer", "--n-heads", "0", _POS_INT.format(0)),
    _flag("train_transformer", "--n-layers", "0", _POS_INT.format(0)),
    _flag("train_transformer", "--d-ff", "0", _POS_INT.format(0)),
    _flag("train_transformer", "--dropout", "1", r"must be a number in \[0, 1\); got 1"),
    _flag("train_transformer", "--warmup", "0", _POS_INT.format(0)),
    _flag("train_transformer", "--bleu-subset", "0", _POS_INT.format(0)),
    _flag("train_transformer", "--beam-size", "0", _POS_INT.format(0)),
    _flag("distill", "--teacher-epochs", "0", _POS_INT.format(0)),
    _flag("distill", "--teacher-checkpoint", "no/such/file.safetensors",
          r"must be an existing file; got no/such/file\.safetensors \(no such file\)"),
    _flag("distill", "--teacher-base-channels", "0", _POS_INT.format(0)),
    _flag("distill", "--teacher-smoothing", "0", _POS_INT.format(0)),
    _flag("distill", "--student-hidden", "0", _POS_INT.format(0)),
    _flag("distill", "--temperature", "0", _POS_FLOAT.format(0)),
    _flag("distill", "--alpha", "1.5", r"must be a number in \[0, 1\]; got 1\.5"),
    _flag("distill", "--student-seeds", "0", _POS_INT.format(0)),
    FlagCase("bench --label with a folder", "bench", ["--label", "../elsewhere"],
             r"argument --label: must be a file name without a folder"),
    FlagCase("bench --only unknown group", "bench", ["--only", "everything"], r"argument --only: invalid choice: 'everything'"),
    FlagCase("regen_golden unknown case", "regen_golden", ["NoSuchBlock", "--check"], r"unknown case\(s\) \['NoSuchBlock'\]"),
]

TINY = ["--no-compile", "--no-progress", "--epochs", "1"]

CROSS = [   # checks that need other flags or the data: run through main(argv)
    FlagCase("train_mlp --batch-size above the training set", "train_mlp", [*TINY, "--batch-size", "5000"],
             r"argument --batch-size: must be at most the number of training examples \(\d+\); got 5000", main=True),
    FlagCase("train_cnn --batch-size above --limit", "train_cnn", [*TINY, "--batch-size", "64", "--limit", "10"],
             r"argument --batch-size: must be at most the number of training examples \(10\); got 64", main=True),
    FlagCase("train_cnn --accumulation-steps not dividing", "train_cnn", [*TINY, "--batch-size", "32", "--accumulation-steps", "3"],
             r"argument --accumulation-steps: must divide --batch-size \(32\); got 3", main=True),
    FlagCase("train_ensemble --batch-size above the training set", "train_ensemble", [*TINY, "--batch-size", "9999"],
             r"argument --batch-size: must be at most the number of training examples", main=True),
    FlagCase("train_transformer --n-heads not dividing", "train_transformer", [*TINY, "--d-model", "32", "--n-heads", "3"],
             r"argument --n-heads: must divide --d-model \(32\); got 3", main=True),
    FlagCase("train_transformer --vocab-size 4", "train_transformer", [*TINY, "--vocab-size", "4"],
             r"argument --vocab-size: must exceed the 4 special tokens", main=True),
    FlagCase("train_transformer --max-len 1", "train_transformer", [*TINY, "--max-len", "1"],
             r"argument --max-len: must be at least 2", main=True),
    FlagCase("distill --batch-size above the training set", "distill", [*TINY, "--batch-size", "9999"],
             r"argument --batch-size: must be at most the number of training examples", main=True),
]

CASES = COMMON + SPECIFIC + CROSS

"""The digits CNN demo (``scripts/train_cnn.py``, as ``make demo`` runs it) written the usual
PyTorch way: the bench's "time to result" baseline.

    python scripts/bench_parts/demo_torch_job.py --seed 0 --init-weights W.pt --out runs/cnn_torch

The same job as the demo: the 8x8 digits with scikit-learn's stratified 70/15/15 split
(``train_test_split``, ``random_state=0``, as ``deepfn.data.digits`` cuts it), the same network
(``SEResNet``, the ``nn.Module`` twin of the demo's ``AdvancedCNN``: 3x3 stem, base 16, one
basic block per stage, squeeze-excitation, dropout 0.2), batch 64 with the last partial batch
dropped, 30 epochs, ``torch.optim.AdamW`` (weight decay 5e-4) under ``OneCycleLR`` (peak 3e-3,
stepped every update, ``cycle_momentum=False`` as deepfn's ``one_cycle``), and the demo's model
selection: after every epoch the validation accuracy (eval mode), and the weights kept are those
of the epoch whose trailing mean over 5 epochs is the best (``fit(smoothing=5)``); the test
accuracy is read with them. The model runs under ``torch.compile(model)`` (``--no-compile``:
eagerly) in a plain Python loop. Shuffling and dropout draw from torch's generators seeded with
``--seed``.

It imports torch, torchvision and scikit-learn only, not deepfn, so its wall time holds no
deepfn import. ``--init-weights`` loads a ``state_dict`` (the bench writes deepfn's initial
weights of the seed there, so both jobs start from one point); without it the twin keeps
torch's default initialisation. Ends with ``RESULT test_acc=... wall_s=...`` and, with
``--out``, writes ``result.json`` and ``best.pt`` there.
"""

from __future__ import annotations

import os
import sys

if not __package__:
    # Run by path, sys.path[0] is this folder, whose random.py would shadow the standard
    # library's (torch imports it): import the folder as the bench_parts package instead.
    _HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

if __package__:
    from ._workload_models import SEResNet
else:
    from bench_parts._workload_models import SEResNet

EVAL_BATCH = 500   # the demo's evaluation batch


@dataclass(frozen=True)
class DemoCNN:
    """The fields of the demo's ``AdvancedCNN`` that ``SEResNet`` reads (digits defaults)."""
    input_channels: int = 1
    num_classes: int = 10
    base_channels: int = 16
    num_blocks: tuple[int, int, int, int] = (1, 1, 1, 1)
    dropout_rate: float = 0.2
    stem: str = "cifar"
    use_attention: bool = True
    spatial_attention: bool = False


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int; got {text}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int; got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="seeds torch's generators (shuffling, dropout)")
    p.add_argument("--epochs", type=_positive_int, default=30)
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of OneCycleLR")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="AdamW's decoupled weight decay")
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--smoothing", type=_positive_int, default=5,
                   help="keep the epoch whose trailing mean of val accuracy over this many epochs is the best")
    p.add_argument("--limit", type=_positive_int, default=None, help="use only the first N training examples")
    p.add_argument("--init-weights", default=None, help="a state_dict file of SEResNet to start from")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.compile(model) (--no-compile: eager)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile's backend (tests: 'eager')")
    p.add_argument("--out", default=None, help="folder for result.json and best.pt")
    return p


def digits_splits(limit: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[(x float32 [n, 1, 8, 8] in [0, 1], y int64 [n])]`` for train, val and test: 70/15/15,
    stratified, ``random_state=0``, each split in the data set's order; ``limit`` keeps the
    first ``limit`` training examples."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.from_numpy(bunch.data).float().div(16.0).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(bunch.target).long()
    idx = list(range(len(y)))
    train, rest = train_test_split(idx, test_size=0.30, random_state=0, stratify=bunch.target)
    val, test = train_test_split(rest, test_size=0.50, random_state=0, stratify=bunch.target[rest])
    splits = [(x[sorted(rows)], y[sorted(rows)]) for rows in (train, val, test)]
    if limit is not None:
        splits[0] = (splits[0][0][:limit], splits[0][1][:limit])
    return splits


def build_model(dropout: float = 0.2, init_weights: str | None = None) -> nn.Module:
    """``SEResNet`` of the demo's CNN, in train mode, with ``init_weights`` loaded if given."""
    model = SEResNet(DemoCNN(dropout_rate=dropout))
    if init_weights is not None:
        model.load_state_dict(torch.load(init_weights, weights_only=True))
    return model.train()


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, total_steps: int):
    """``(AdamW, OneCycleLR)``: the demo's ``adamw(one_cycle(lr, total_steps), weight_decay)``."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps, cycle_momentum=False)
    return opt, schedule


def train_step(run: nn.Module, opt: torch.optim.Optimizer, schedule, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One update on ``(x, y)``: forward, mean cross-entropy, backward, ``opt.step()``, ``schedule.step()``;
    returns the detached loss (a 0-d tensor, not read back here)."""
    loss = F.cross_entropy(run(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    schedule.step()
    return loss.detach()


@torch.no_grad()
def accuracy(run: nn.Module, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``run`` (eval mode, batches of ``EVAL_BATCH``); ``model`` back in train mode after."""
    model.eval()
    correct = sum(int((run(x[i:i + EVAL_BATCH]).argmax(-1) == y[i:i + EVAL_BATCH]).sum())
                  for i in range(0, x.shape[0], EVAL_BATCH))
    model.train()
    return correct / x.shape[0]


def main(argv: list[str] | None = None) -> dict:
    start = time.perf_counter()
    parser = build_parser()
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = digits_splits(args.limit)
    if args.batch_size > x_tr.shape[0]:
        parser.error(f"argument --batch-size: must be at most the number of training examples ({x_tr.shape[0]}); "
                     f"got {args.batch_size}")
    per_epoch = x_tr.shape[0] // args.batch_size
    model = build_model(args.dropout, args.init_weights)
    opt, schedule = make_optimizer(model, args.lr, args.weight_decay, args.epochs * per_epoch)
    run = torch.compile(model, backend=args.compile_backend) if args.compile else model
    shuffle = torch.Generator().manual_seed(args.seed)
    window: list[float] = []
    best_score, best_epoch, best_state, rows = -math.inf, 0, None, []
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(x_tr.shape[0], generator=shuffle)
        loss_sum = torch.zeros(())
        for i in range(per_epoch):
            rows_i = order[i * args.batch_size:(i + 1) * args.batch_size]
            loss_sum += train_step(run, opt, schedule, x_tr[rows_i], y_tr[rows_i])
        val_acc = accuracy(run, model, x_va, y_va)
        window = (window + [val_acc])[-args.smoothing:]
        score = sum(window) / len(window)
        rows.append({"epoch": epoch, "train_loss": loss_sum.item() / per_epoch, "val_accuracy": val_acc,
                     "val_accuracy_smoothed": score})
        if score > best_score:
            best_score, best_epoch, best_state = score, epoch, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    figures = {"test_acc": accuracy(run, model, x_te, y_te), "best_epoch": best_epoch, "epochs_run": args.epochs,
               "params": sum(p.numel() for p in model.parameters()), "steps": args.epochs * per_epoch}
    figures["wall_s"] = round(time.perf_counter() - start, 1)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        torch.save(best_state, os.path.join(args.out, "best.pt"))
        with open(os.path.join(args.out, "result.json"), "w", encoding="utf-8") as f:
            json.dump({**figures, "history": rows}, f, indent=2)
    print("RESULT " + " ".join(f"{k}={v:.4f}" if k == "test_acc" else f"{k}={v}" for k, v in figures.items()),
          flush=True)
    return figures


if __name__ == "__main__":
    main()

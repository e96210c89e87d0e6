"""The Multi30k translation job (``scripts/train_transformer.py``) with its training written the
usual PyTorch way: the "time to result" baseline of the Transformer.

    python scripts/bench_parts/multi30k_torch_job.py --data-dir DIR --amp --time-budget-min 23 --seed 0 --out runs/mt_torch

What it shares with the script, so that only the training engine differs: the data (Multi30k
through ``deepfn.data.multi30k``), the joint BPE tokenizer, the encoding, the length-bucketed
batches of 64 trimmed to their longest rows, the network (``Seq2SeqTransformer``, the
``nn.Module`` twin of ``deepfn.models.Transformer``, holding deepfn's initial weights of the
seed), and the test measurement (the best weights copied back into deepfn's model, beam search
of width 4, sacrebleu), so both jobs' BLEU comes from one decoder. What is written the usual way:
``torch.compile(model)`` (``--no-compile``: eager) in a plain loop, ``torch.autocast`` in
bfloat16 with ``--amp``, label-smoothed ``F.cross_entropy``, ``torch.optim.Adam`` under a
``LambdaLR`` noam schedule, ``clip_grad_norm_(1.0)``, dropout from torch's generator, and after
every epoch the validation loss in eval mode, early stopping (patience 3) and the best epoch's
``state_dict`` kept. Training stops once ``--time-budget-min`` has passed (checked before each
step, as ``fit(time_limit_s=)`` does). Unlike the script it logs no per-epoch greedy BLEU.

Ends with ``RESULT test_bleu=... val_loss=... wall_s=...`` and, with ``--out``, writes
``result.json`` (with the per-epoch history) there.
"""

from __future__ import annotations

import os
import sys

if not __package__:
    # Run by path, sys.path[0] is this folder, whose random.py would shadow the standard
    # library's: put the scripts folder there instead (train_transformer lives in it).
    _HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import train_transformer as tt  # noqa: E402
from bench_parts._workload_models import Seq2SeqTransformer  # noqa: E402

from deepfn import data, interop, random  # noqa: E402
from deepfn.models import Transformer  # noqa: E402

EVAL_BATCH = 128   # the script's evaluation batch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=None, help="folder with Multi30k's {split}.{de,en}.gz")
    p.add_argument("--seed", type=int, default=0, help="deepfn's initial weights and batch order; torch's dropout")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=3, help="epochs without a better validation loss before stopping")
    p.add_argument("--time-budget-min", type=float, default=20.0, help="stop training after this many minutes")
    p.add_argument("--limit", type=int, default=None, help="use only the first N pairs of every split")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="the noam schedule's peak")
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--n-layers", type=int, default=3)
    p.add_argument("--d-ff", type=int, default=1024)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--amp", action="store_true", help="torch.autocast in bfloat16")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.compile(model) (--no-compile: eager)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile's backend (tests: 'eager')")
    p.add_argument("--out", required=True, help="folder for the tokenizer and result.json")
    return p


def token_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Label-smoothed (0.1) cross-entropy over the non-pad tokens of ``labels [B, T]``."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=tt.PAD,
                           label_smoothing=0.1, reduction=reduction)


def make_optimizer(model: torch.nn.Module, d_model: int, warmup: int, lr: float):
    """``(Adam, LambdaLR)``: the script's ``adam(noam(d_model, warmup, factor), betas=(0.9, 0.98),
    eps=1e-9)``, its noam factor scaled so that the peak is ``lr``."""
    factor = lr / (d_model ** -0.5 * warmup ** -0.5)
    opt = torch.optim.Adam(model.parameters(), lr=factor, betas=(0.9, 0.98), eps=1e-9)
    noam = lambda n: d_model ** -0.5 * min((n + 1) ** -0.5, (n + 1) * warmup ** -1.5)  # noqa: E731
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, noam)


def train_step(run, model: torch.nn.Module, opt, schedule, src: torch.Tensor, tgt_in: torch.Tensor,
               tgt_out: torch.Tensor, amp: bool) -> torch.Tensor:
    """One update on a batch (``int64 [B, S]``, ``[B, T]``, ``[B, T]``): forward under autocast
    (``amp``), token loss, backward, gradient norm clipped to 1, ``opt.step()``,
    ``schedule.step()``; returns the detached loss (0-d, not read back here)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        logits = run(src, tgt_in)
    loss = token_loss(logits, tgt_out)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    schedule.step()
    return loss.detach()


@torch.no_grad()
def validation_loss(run, model, val, batch_fn, amp: bool) -> float:
    """Mean token loss over ``val`` in eval mode (batches of ``EVAL_BATCH``); train mode after."""
    model.eval()
    total, tokens = 0.0, 0
    for i in range(0, val[0].shape[0], EVAL_BATCH):
        (src, tgt_in), tgt_out = batch_fn(val[0][i:i + EVAL_BATCH], val[1][i:i + EVAL_BATCH])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = run(src, tgt_in)
        total += float(token_loss(logits, tgt_out, "sum"))
        tokens += int((tgt_out != tt.PAD).sum())
    model.train()
    return total / tokens


def main(argv: list[str] | None = None) -> dict:
    start = time.perf_counter()
    args = build_parser().parse_args(argv)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    splits = {s: data.multi30k(args.data_dir, s)[:args.limit] for s in ("train", "val", "test_2016_flickr")}
    tok = tt.tokenizer_for(os.path.join(args.out, "tokenizer.json"), splits["train"], args.vocab_size)
    tensors = {s: (tt.encode(tok, [p[0] for p in pairs], args.max_len, False),
                   tt.encode(tok, [p[1] for p in pairs], args.max_len + 1, True)) for s, pairs in splits.items()}
    config = Transformer(vocab_size=tok.get_vocab_size(), d_model=args.d_model, n_heads=args.n_heads,
                         n_layers=args.n_layers, d_ff=args.d_ff, dropout=args.dropout, max_seq_len=args.max_len + 1,
                         pad_token_id=tt.PAD)
    k_init, k_order = random.split(random.key(args.seed))
    params, state = config.init(k_init)
    model = interop.to_torch(config, params, state, Seq2SeqTransformer(config)).train()
    run = torch.compile(model, backend=args.compile_backend) if args.compile else model
    opt, schedule = make_optimizer(model, args.d_model, args.warmup, args.lr)
    batch_fn = tt.make_batch_fn(torch.device("cpu"), None)
    train_src, train_tgt = tensors["train"]
    lengths = (train_src != tt.PAD).sum(1) + (train_tgt != tt.PAD).sum(1)
    order_of = data.bucket_by_length(lengths, args.batch_size)
    per_epoch = train_src.shape[0] // args.batch_size

    fit_start, rows, step = time.perf_counter(), [], 0
    best_loss, best_epoch, best_state, waited = math.inf, 0, None, 0
    for epoch in range(1, args.epochs + 1):
        tic, loss_sum, done = time.perf_counter(), torch.zeros(()), 0
        order = order_of(random.fold_in(k_order, epoch), torch.randperm(train_src.shape[0]))
        for b in range(per_epoch):
            if time.perf_counter() - fit_start > args.time_budget_min * 60:
                break
            idx = order[b * args.batch_size:(b + 1) * args.batch_size]
            (src, tgt_in), tgt_out = batch_fn(train_src[idx], train_tgt[idx])
            loss_sum += train_step(run, model, opt, schedule, src, tgt_in, tgt_out, args.amp)
            done, step = done + 1, step + 1
        if done == 0:
            break
        val_loss = validation_loss(run, model, tensors["val"], batch_fn, args.amp)
        rows.append({"epoch": epoch, "steps": done, "train_loss": loss_sum.item() / done, "val_loss": val_loss,
                     "seconds": round(time.perf_counter() - tic, 1)})
        print(json.dumps(rows[-1]), flush=True)
        if val_loss < best_loss:
            best_loss, best_epoch, best_state, waited = val_loss, epoch, copy.deepcopy(model.state_dict()), 0
        else:
            waited += 1
        if done < per_epoch or waited >= args.patience:
            break
    model.load_state_dict(best_state)
    params, state = interop.from_torch(config, model)
    hyps = tt.translate(config, params, state, tok, tensors["test_2016_flickr"][0], args.beam_size, args.max_len)
    figures = {"test_bleu": tt.bleu(hyps, [p[1] for p in splits["test_2016_flickr"]]), "val_loss": best_loss,
               "best_epoch": best_epoch, "epochs_run": len(rows), "steps": step,
               "wall_s": round(time.perf_counter() - start, 1)}
    with open(os.path.join(args.out, "result.json"), "w", encoding="utf-8") as f:
        json.dump({**figures, "history": rows}, f, indent=2)
    print("RESULT " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) and k != "wall_s" else f"{k}={v}"
                               for k, v in figures.items()), flush=True)
    return figures


if __name__ == "__main__":
    main()

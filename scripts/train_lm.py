"""Train a character-level GPT on the English side of Multi30k; report held-out perplexity.

    python scripts/train_lm.py --download --out runs/lm                     # --time-budget-min 10
    python scripts/train_lm.py --compare-torch --out runs/lm_vs_torch       # then nanoGPT-style PyTorch
    python scripts/train_lm.py --max-steps 20 --n-layers 1 --d-model 32     # smoke test

The text is the English captions of Multi30k task 1 (train / val / test_2016_flickr) in
``--data-dir``, by default the per-user folder ``~/.cache/deepfn/data/multi30k`` (or
``$DEEPFN_DATA_DIR/multi30k``); ``--download`` fetches the missing files there once, checked
against fixed SHA-256 digests. Each split's captions are joined with newlines into one stream;
the character vocabulary (``data.CharVocab``, ``<unk>`` = 0 for characters the training split
lacks) comes from the training split only and is saved as ``--out/vocab.json``.

The model is ``models.GPT`` (nanoGPT's small character shape by default: 4 layers, 4 heads,
128 wide, 128-token blocks, dropout 0.1), trained on contiguous blocks (``data.next_token_blocks``)
in a keyed random order with AdamW (decay on the weight matrices and embeddings only),
linear warmup then cosine decay to ``--min-lr-ratio * --lr``, gradient clipping, and
compiled steps (``--no-compile``: eager). After every epoch (a last, partial one too) the
history records the validation loss and perplexity, ``exp`` of the mean next-token NLL over
every character of the validation split (eval mode), and ``--samples`` texts generated with
a fixed key (``models.generate``, ``--temperature``, ``--top-k``). The test perplexity of the
kept (best-validation) weights ends the run: ``RESULT test_ppl=... val_ppl=... val_loss=...
steps=... steps_per_s=... params=... vocab=... wall_s=...`` (``steps_per_s``: updates per second
of the training loops, compilation included, evaluation and sampling not).

``--compare-torch`` then trains the plain-PyTorch twin (``bench_parts/lm_torch_baseline.py``:
nanoGPT's ``nn.Module`` GPT, ``torch.optim.AdamW``, ``torch.compile(model)``) in the same
process on the same blocks, batch, schedule and time budget, and adds its figures
(``torch_val_ppl``, ``torch_test_ppl``, ``torch_steps``, ...) to the RESULT line.
"""

from __future__ import annotations

import json
import math
import os

import _common
import torch

from deepfn import data, distributed, losses, models, optim, random, tree
from deepfn.data.chars import UNK_ID
from deepfn.train import TrainState, evaluate, fit, make_eval_step, make_train_step

SPLITS = ("train", "val", "test_2016_flickr")
#: The label of padded positions of the held-out blocks: counted by no loss and no accuracy.
IGNORE = -100


def build_parser():
    p = _common.parser(__doc__.splitlines()[0], epochs=100, batch_size=64, lr=1e-3, out="runs/lm")
    p.set_defaults(compile=True)
    p.add_argument("--data-dir", default=None,
                   help="folder with Multi30k's {split}.en.gz (and .de.gz) files (default: "
                        "$DEEPFN_DATA_DIR/multi30k, else ~/.cache/deepfn/data/multi30k)")
    p.add_argument("--download", action="store_true",
                   help="fetch the missing Multi30k files into --data-dir (SHA-256 checked)")
    p.add_argument("--time-budget-min", type=_common.positive_float, default=10.0,
                   help="stop training after this many minutes (compilation and evaluation included)")
    p.add_argument("--block-size", type=_common.positive_int, default=128, help="characters per training row")
    p.add_argument("--d-model", type=_common.positive_int, default=128)
    p.add_argument("--n-layers", type=_common.positive_int, default=4)
    p.add_argument("--n-heads", type=_common.positive_int, default=4)
    p.add_argument("--dropout", type=_common.probability, default=0.1)
    p.add_argument("--warmup", type=_common.positive_int, default=100, help="linear warmup steps")
    p.add_argument("--decay-steps", type=_common.positive_int, default=None,
                   help="steps (warmup included) of the cosine decay, then flat (default: --max-steps if "
                        "given, else 2000)")
    p.add_argument("--min-lr-ratio", type=_common.fraction, default=0.1,
                   help="the learning rate at the end of the decay, as a share of --lr")
    p.add_argument("--weight-decay", type=_common.nonnegative_float, default=0.1,
                   help="AdamW's decoupled decay of the weight matrices and embeddings")
    p.add_argument("--clip-norm", type=_common.positive_float, default=1.0, help="gradient global-norm clip")
    p.add_argument("--samples", type=_common.positive_int, default=3, help="texts generated after every epoch")
    p.add_argument("--sample-tokens", type=_common.positive_int, default=100,
                   help="characters per generated text (below --block-size)")
    p.add_argument("--temperature", type=_common.positive_float, default=0.8, help="sampling temperature")
    p.add_argument("--top-k", type=_common.positive_int, default=20, help="sample among the k likeliest characters")
    p.add_argument("--compare-torch", action="store_true",
                   help="then train nanoGPT-style plain PyTorch the same way, with the same time budget, and "
                        "report both")
    return p


def check_args(parser, args) -> None:
    """Flags that constrain each other: a ``parser.error`` (exit 2) naming the flag."""
    if args.d_model % args.n_heads:
        parser.error(f"argument --n-heads: must divide --d-model ({args.d_model}); got {args.n_heads}")
    if args.sample_tokens >= args.block_size:
        parser.error(f"argument --sample-tokens: must be below --block-size ({args.block_size}), the model's "
                     f"context after the one-character prompt; got {args.sample_tokens}")
    if decay_steps(args) <= args.warmup:
        parser.error(f"argument --decay-steps: must exceed --warmup ({args.warmup}); got {decay_steps(args)}"
                     + ("" if args.decay_steps else " (from --max-steps)"))
    for flag, clash in (("amp", "the PyTorch twin trains in float32"), ("resume", "the PyTorch twin cannot resume"),
                        ("distributed", "the PyTorch twin runs in one process")):
        if args.compare_torch and getattr(args, flag):
            parser.error(f"argument --compare-torch: not with --{flag} ({clash}); got both")


def decay_steps(args) -> int:
    return args.decay_steps or args.max_steps or 2000


def load_texts(data_dir, download: bool) -> dict[str, str]:
    """Each split's English captions, joined with newlines, ending with one."""
    return {s: "".join(en + "\n" for _, en in data.multi30k(data_dir, s, download=download)) for s in SPLITS}


def heldout_blocks(ids: torch.Tensor, block_size: int, rows_multiple: int):
    """``(inputs, labels)`` covering every next-character prediction of ``ids`` once, padded
    with rows of ``IGNORE`` labels to a multiple of ``rows_multiple`` rows (one batch shape for
    a compiled evaluation), and the number of labels that count."""
    x, y = data.next_token_blocks(ids, block_size, pad_last=True, pad_id=UNK_ID, ignore_index=IGNORE)
    extra = -x.shape[0] % rows_multiple
    x = torch.cat([x, x.new_full((extra, block_size), UNK_ID)])
    y = torch.cat([y, y.new_full((extra, block_size), IGNORE)])
    return (x, y), int((y != IGNORE).sum())


def nll_per_position(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The summed next-token NLL of the labels that count, over all ``b * t`` positions.

    ``evaluate`` weights each batch's value by its row count, so the mean it returns is the
    summed NLL over ``n * t`` positions; multiplied by ``n * t / counted`` it is the exact
    mean over the counted labels, whatever the padding (``HeldOut.mean``).
    """
    return losses.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum") / labels.numel()


class HeldOut:
    """A held-out split as padded blocks, and its exact mean NLL and accuracy per character."""

    def __init__(self, ids: torch.Tensor, block_size: int, batch_size: int, device: torch.device) -> None:
        (x, y), self.counted = heldout_blocks(ids, block_size, batch_size)
        self.blocks, self.batch_size = (x.to(device), y.to(device)), batch_size
        self.scale = y.numel() / self.counted

    def mean(self, metrics: dict[str, float]) -> dict[str, float]:
        """``evaluate``'s per-position means as means over the counted labels, with ``ppl``."""
        loss = metrics["loss"] * self.scale
        return {"loss": loss, "accuracy": metrics["accuracy"] * self.scale, "ppl": math.exp(loss)}

    def score(self, eval_step, params, state, distributed_: bool) -> dict[str, float]:
        return self.mean(evaluate(eval_step, params, state, self.blocks, self.batch_size, distributed=distributed_))


def decays(path: str, leaf: torch.Tensor) -> bool:
    """AdamW's decay mask, by path (``layers.0.self_attn.in_proj_weight``): the weight matrices
    and embeddings decay; biases and the LayerNorms (``norm1``, ``norm2``, ``ln_f``) do not."""
    parts = path.split(".")
    return parts[-1].endswith("weight") and not any(p.startswith(("ln_", "norm")) for p in parts)


def generate_samples(model, params, vocab, prompt_id: int, args, key, compile: bool) -> list[str]:
    """``--samples`` texts of ``--sample-tokens`` characters, each after a one-newline prompt
    (the start of a caption), with a compiled cached decode step unless ``compile`` is False."""
    prompt = torch.full((args.samples, 1), prompt_id, dtype=torch.int64, device=key.device)
    with torch.no_grad():
        ids = models.generate(model, params, prompt, key, max_new_tokens=args.sample_tokens,
                              temperature=args.temperature, top_k=args.top_k, compile=compile)
    return [vocab.decode(row[1:].cpu()) for row in ids]


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    run = _common.setup(args)
    dev = run["device"]
    if not distributed.is_main():
        distributed.barrier()   # rank 0 downloads alone; the others read (and verify) its files
    texts = load_texts(args.data_dir, args.download)
    if distributed.is_main():
        distributed.barrier()
    vocab = data.CharVocab.from_text(texts["train"])
    ids = {s: vocab.encode(t) for s, t in texts.items()}
    if ids["train"].numel() < args.block_size + 1:
        parser.error(f"argument --block-size: must be below the training text's {ids['train'].numel()} "
                     f"characters; got {args.block_size}")
    train_blocks = data.next_token_blocks(ids["train"], args.block_size)
    _common.check_batch_fits(parser, args, train_blocks[0].shape[0])
    held = {s: HeldOut(ids[s], args.block_size, args.batch_size, dev) for s in SPLITS[1:]}
    if distributed.is_main():
        with open(os.path.join(args.out, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump({"unk_id": UNK_ID, "chars": vocab.chars}, f, ensure_ascii=False)

    model = models.GPT(vocab_size=vocab.size, max_len=args.block_size, d_model=args.d_model,
                       n_layers=args.n_layers, n_heads=args.n_heads, dropout=args.dropout)
    schedule = optim.cosine_decay(args.lr, decay_steps(args) - args.warmup, alpha=args.min_lr_ratio,
                                  warmup_steps=args.warmup)
    opt = optim.adamw(schedule, betas=(0.9, 0.99), weight_decay=args.weight_decay, mask=decays)
    k_init, k_fit, k_sample = random.split(random.key(args.seed).to(dev), 3)
    ts = _common.replicate(_common.to_device(TrainState.create(model, opt, k_init, policy=run["policy"]), dev))
    step = make_train_step(model, losses.cross_entropy, opt, policy=run["policy"], loss_scale=run["loss_scale"],
                           clip_norm=args.clip_norm, all_reduce=_common.all_reduce(args), compile=run["compile"],
                           compile_cache=run["compile_cache"], lr=schedule, donate=True)
    eval_step = make_eval_step(model, nll_per_position, policy=run["policy"], compile=run["compile"],
                               compile_cache=run["compile_cache"])
    newline = int(vocab.encode("\n")[0])

    def per_epoch(train_state, row):
        """The exact validation figures in place of ``evaluate``'s per-position ones, and samples."""
        val = held["val"].mean({"loss": row["val_loss"], "accuracy": row["val_accuracy"]})
        out = {"val_loss": val["loss"], "val_accuracy": val["accuracy"], "val_ppl": val["ppl"]}
        if distributed.is_main():
            out["samples"] = generate_samples(model, train_state.params, vocab, newline, args, k_sample,
                                              run["compile"])
            _common.log(f"sample: {out['samples'][0]!r}")
        return out

    ts, history = fit(step, ts, train_blocks, batch_size=args.batch_size, key=k_fit, eval_step=eval_step,
                      val_data=held["val"].blocks, on_epoch_end=per_epoch, time_limit_s=args.time_budget_min * 60,
                      **_common.fit_kwargs(args, run))
    val = held["val"].score(eval_step, ts.params, ts.state, args.distributed)
    test = held["test_2016_flickr"].score(eval_step, ts.params, ts.state, args.distributed)
    train_s = sum(r["epoch_time"] for r in history.rows)
    figures = dict(test_ppl=test["ppl"], val_ppl=val["ppl"], val_loss=val["loss"], best_epoch=history.best_epoch,
                   epochs_run=_common.epochs_run(history), steps=history.rows[-1]["step"],
                   steps_per_s=history.rows[-1]["step"] / max(train_s, 1e-9), params=tree.size(ts.params),
                   vocab=vocab.size)
    if distributed.is_main():
        samples = generate_samples(model, ts.params, vocab, newline, args, k_sample, run["compile"])
        with open(os.path.join(args.out, "samples.txt"), "w", encoding="utf-8") as f:
            f.write("\n\n".join(samples) + "\n")
    if args.compare_torch:
        figures.update(compare_torch(args, vocab, train_blocks, held, dev))
    return _common.finish(args, run, **figures)


def compare_torch(args, vocab, train_blocks, held, dev) -> dict:
    """Train the nanoGPT-style PyTorch twin the same way; its figures as ``torch_*``."""
    from bench_parts import lm_torch_baseline as twin

    from deepfn.train.history import write_history

    cfg = twin.GPTConfig(vocab_size=vocab.size, block_size=args.block_size, n_layers=args.n_layers,
                         n_heads=args.n_heads, d_model=args.d_model, dropout=args.dropout, lr=args.lr,
                         min_lr_ratio=args.min_lr_ratio, warmup_steps=args.warmup, decay_steps=decay_steps(args),
                         weight_decay=args.weight_decay, clip_norm=args.clip_norm)
    result = twin.train(cfg, train_blocks, held["val"].blocks, test_blocks=held["test_2016_flickr"].blocks,
                        batch_size=args.batch_size, seed=args.seed, time_budget_s=args.time_budget_min * 60,
                        max_steps=args.max_steps, epochs=args.epochs, compile=args.compile, device=dev,
                        log=_common.log)
    write_history(os.path.join(args.out, "torch_history.jsonl"), result["rows"])
    return {f"torch_{k}": result[k] for k in ("test_ppl", "val_ppl", "steps", "steps_per_s", "params")}


if __name__ == "__main__":
    main()

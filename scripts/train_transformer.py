"""Train a Transformer to translate Multi30k German to English; report BLEU (sacrebleu).

    python scripts/train_transformer.py --download --out runs/transformer      # --time-budget-min 20
    python scripts/train_transformer.py --max-steps 20 --limit 256 --d-model 32  # smoke test
    torchrun --nproc_per_node 2 scripts/train_transformer.py --distributed     # data parallel

The data is Multi30k task 1 (de, en) in ``--data-dir``, by default the per-user folder
``~/.cache/deepfn/data/multi30k`` (or ``$DEEPFN_DATA_DIR/multi30k``); ``--download`` fetches
the missing files there once, checked against fixed SHA-256 digests.

A joint byte-pair tokenizer (``tokenizers``, vocabulary ~8000, ``<pad>=0 <bos>=1 <eos>=2
<unk>=3``) is trained on the training split and saved as ``--out/tokenizer.json``. Training
uses label smoothing 0.1, a noam (or one-cycle) schedule and early stopping on the
validation loss; greedy BLEU on a validation subset is logged every epoch, and the test
BLEU (test_2016_flickr, beam search) is measured at the end. Ends with ``RESULT
test_bleu=... val_loss=... params=... wall_s=...``.

The train and eval steps are compiled (``--no-compile``: eager). Each batch is trimmed to its
longest source and target row, and the compiled steps take those widths as symbols
(``make_train_step(dynamic_dims=(1,))``): one compile each, in the first epoch, saved in
``--out/compiled-steps`` for the next run (the history's ``*_compiles`` are 0 after it).
The last validation batch is padded to the full 128 rows with ignored labels.
``--length-buckets N`` pads instead to the next of N widths up to --max-len, one compile per
width (slower here: measured in docs/benchmarks.md).
"""

from __future__ import annotations

import os

import _common
import torch

from deepfn import data, distributed, losses, optim, random, tree
from deepfn.data.padding import bucket_width, bucket_widths, pad_width
from deepfn.models import Transformer
from deepfn.train import TrainState, evaluate, fit, make_eval_step, make_train_step

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
PAD, BOS, EOS = 0, 1, 2


def build_parser():
    p = _common.parser(__doc__.splitlines()[0], epochs=30, batch_size=64, lr=1e-3, out="runs/transformer")
    p.set_defaults(patience=3)
    p.add_argument("--data-dir", default=None,
                   help="folder with Multi30k's {split}.{de,en}.gz (default: $DEEPFN_DATA_DIR/multi30k, "
                        "else ~/.cache/deepfn/data/multi30k)")
    p.add_argument("--download", action="store_true",
                   help="fetch the missing Multi30k files into --data-dir (SHA-256 checked)")
    p.add_argument("--time-budget-min", type=_common.positive_float, default=20.0, help="stop training after this many minutes")
    p.add_argument("--limit", type=_common.positive_int, default=None, help="use only the first N pairs of every split")
    p.add_argument("--vocab-size", type=_common.positive_int, default=8000)
    p.add_argument("--max-len", type=_common.positive_int, default=64, help="tokens per sentence (longer ones are cut)")
    p.add_argument("--d-model", type=_common.positive_int, default=256)
    p.add_argument("--n-heads", type=_common.positive_int, default=4)
    p.add_argument("--n-layers", type=_common.positive_int, default=3)
    p.add_argument("--d-ff", type=_common.positive_int, default=1024)
    p.add_argument("--dropout", type=_common.probability, default=0.1)
    p.add_argument("--schedule", choices=("noam", "one_cycle"), default="noam",
                   help="noam: warmup then 1/sqrt(step), peak ~--lr; one_cycle: over --epochs")
    p.add_argument("--warmup", type=_common.positive_int, default=1000, help="noam warmup steps")
    p.add_argument("--no-bucketing", action="store_true",
                   help="random batches instead of batches of similar lengths (2x the padding)")
    p.add_argument("--length-buckets", type=_common.nonnegative_int, default=0,
                   help="pad each batch's sources and targets to the next of this many widths up to --max-len, "
                        "one compile per width (0: trim each batch to its longest row; compiled steps take the "
                        "widths as symbols, one compile for all)")
    p.add_argument("--bleu-subset", type=_common.positive_int, default=200, help="validation pairs for the per-epoch greedy BLEU")
    p.add_argument("--beam-size", type=_common.positive_int, default=4, help="beam width for the test BLEU (1: greedy)")
    _common.add_sharding_flag(p)
    return p


def check_args(parser, args) -> None:
    """Flags that constrain each other: a ``parser.error`` (exit 2) naming the flag."""
    if args.d_model % args.n_heads:
        parser.error(f"argument --n-heads: must divide --d-model ({args.d_model}); got {args.n_heads}")
    if args.vocab_size <= len(SPECIALS):
        parser.error(f"argument --vocab-size: must exceed the {len(SPECIALS)} special tokens {SPECIALS}; "
                     f"got {args.vocab_size}")
    if args.max_len < 2:
        parser.error(f"argument --max-len: must be at least 2 (a token and <eos>); got {args.max_len}")


def tokenizer_for(path, pairs, vocab_size):
    """Load ``path`` or train a joint BPE tokenizer on both sides of ``pairs`` and save it there."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    if os.path.exists(path):
        return Tokenizer.from_file(path)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator((s for pair in pairs for s in pair), trainer=trainer)
    tok.save(path)
    return tok


def encode(tok, sentences, max_len, bos):
    """``int64 [n, max_len]``: ``[<bos>] ids <eos>`` (``bos``) or ``ids <eos>``, cut and padded."""
    rows = torch.full((len(sentences), max_len), PAD, dtype=torch.int64)
    for i, enc in enumerate(tok.encode_batch(sentences)):
        ids = ([BOS] if bos else []) + enc.ids[:max_len - 1 - bos] + [EOS]
        rows[i, :len(ids)] = torch.tensor(ids)
    return rows


def make_batch_fn(device, widths):
    """``(src, tgt) -> ((src, tgt_in), tgt_out)`` on ``device``.

    ``widths`` None: trimmed to the batch's longest source and target rows. Else sources and
    targets both padded with ``<pad>`` (which the model masks and the loss ignores) to the
    smallest of ``widths`` that holds both, so a compiled step meets ``len(widths)`` shapes.
    Lengths are read on the CPU copy (no device sync).
    """
    def batch_fn(src, tgt):
        src_len = int((src != PAD).sum(1).max())
        tgt_len = int((tgt != PAD).sum(1).max()) - 1   # tgt_in and tgt_out: [bos] ids [eos] less one token
        if widths is None:
            src_w, tgt_w = src_len, tgt_len
        else:
            src_w = tgt_w = bucket_width(max(src_len, tgt_len), widths)
        src, tgt = pad_width(src, src_w, PAD).to(device), pad_width(tgt, tgt_w + 1, PAD).to(device)
        return (src, tgt[:, :-1]), tgt[:, 1:]
    return batch_fn


def translate(model, params, state, tok, src, beam_size, max_len, batch_size=100):
    """Detokenised translations of ``src [n, S]`` (greedy when ``beam_size == 1``)."""
    out = []
    with torch.no_grad():
        for i in range(0, src.shape[0], batch_size):
            chunk = src[i:i + batch_size]
            chunk = chunk[:, :int((chunk != PAD).sum(1).max())].to(params_device(params))
            if beam_size == 1:
                ids = model.greedy_decode(params, state, chunk, max_len, bos_id=BOS, eos_id=EOS)
            else:
                ids = model.beam_search(params, state, chunk, max_len, beam_size=beam_size, bos_id=BOS, eos_id=EOS)
            for row in ids.tolist():
                row = row[:row.index(EOS)] if EOS in row else row
                out.append(tok.decode([t for t in row if t != PAD]))
    return out


def params_device(params):
    return next(iter(tree.leaves(params))).device


def bleu(hypotheses, references):
    import sacrebleu
    return sacrebleu.corpus_bleu(hypotheses, [references]).score


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    _common.check_sharding(parser, args)
    run = _common.setup(args)
    dev = run["device"]
    if not distributed.is_main():
        distributed.barrier()   # rank 0 downloads alone; the others read (and verify) its files
    splits = {s: data.multi30k(args.data_dir, s, download=args.download)[:args.limit]
              for s in ("train", "val", "test_2016_flickr")}
    if distributed.is_main():
        distributed.barrier()
    if not distributed.is_main():
        distributed.barrier()   # rank 0 trains and saves the tokenizer; the others load its file
    tok = tokenizer_for(os.path.join(args.out, "tokenizer.json"), splits["train"], args.vocab_size)
    if distributed.is_main():
        distributed.barrier()
    tensors = {s: (encode(tok, [p[0] for p in pairs], args.max_len, False),
                   encode(tok, [p[1] for p in pairs], args.max_len + 1, True)) for s, pairs in splits.items()}

    model = Transformer(vocab_size=tok.get_vocab_size(), d_model=args.d_model, n_heads=args.n_heads,
                        n_layers=args.n_layers, d_ff=args.d_ff, dropout=args.dropout,
                        max_seq_len=args.max_len + 1, pad_token_id=PAD)
    per_epoch = tensors["train"][0].shape[0] // args.batch_size
    if args.schedule == "noam":
        # noam's peak is d_model**-0.5 * warmup**-0.5 * factor: scale it to reach --lr.
        factor = args.lr / (args.d_model ** -0.5 * args.warmup ** -0.5)
        schedule = optim.noam(args.d_model, args.warmup, factor=factor)
    else:
        schedule = optim.one_cycle(args.lr, max(args.epochs * per_epoch, 1))
    opt = optim.adam(schedule, betas=(0.9, 0.98), eps=1e-9)
    loss_fn = lambda logits, labels: losses.cross_entropy(logits, labels, label_smoothing=0.1,  # noqa: E731
                                                          ignore_index=PAD)
    k_init, k_fit = random.split(random.key(args.seed).to(dev))
    ts = _common.replicate(_common.to_device(TrainState.create(model, opt, k_init, policy=run["policy"]), dev))
    ts = _common.shard(args, ts)   # --sharding: this rank's share; fit evaluates and saves it whole
    buckets = args.length_buckets
    # Batches at their own widths: compiled steps take them as symbols ([B, T] dim 1; eager steps
    # count compile events with it), but sharded steps compile static shapes only.
    widths = (1,) if buckets == 0 and _common.sharding(args) is None else None
    step = make_train_step(model, loss_fn, opt, policy=run["policy"], loss_scale=run["loss_scale"],
                           clip_norm=1.0, all_reduce=_common.all_reduce(args), compile=run["compile"],
                           compile_cache=_common.train_step_cache(args, run), lr=schedule,
                           ignore_index=PAD, donate=True, sharding=_common.sharding(args), dynamic_dims=widths)
    eval_step = make_eval_step(model, loss_fn, policy=run["policy"], compile=run["compile"],
                               compile_cache=run["compile_cache"], ignore_index=PAD, dynamic_dims=widths)
    batch_fn = make_batch_fn(dev, bucket_widths(args.max_len, buckets) if buckets else None)
    lengths = (tensors["train"][0] != PAD).sum(1) + (tensors["train"][1] != PAD).sum(1)
    world = distributed.world_size() if args.distributed else 1
    batch_order = None if args.no_bucketing else data.bucket_by_length(lengths, args.batch_size // world)
    val_src = tensors["val"][0][:args.bleu_subset]
    val_refs = [p[1] for p in splits["val"][:args.bleu_subset]]

    def val_bleu(train_state, row):
        if not distributed.is_main():   # only rank 0 logs it; the ranks' parameters are the same
            return {"val_bleu": float("nan")}
        hyps = translate(model, train_state.params, train_state.state, tok, val_src, 1, args.max_len)
        return {"val_bleu": bleu(hyps, val_refs)}

    ts, history = fit(step, ts, tensors["train"], batch_size=args.batch_size, key=k_fit, eval_step=eval_step,
                      val_data=tensors["val"], eval_batch_size=128, eval_pad_label=PAD, batch_fn=batch_fn,
                      on_epoch_end=val_bleu,
                      batch_order=batch_order, time_limit_s=args.time_budget_min * 60,
                      **_common.fit_kwargs(args, run))
    ts = _common.unshard(ts)
    val = evaluate(eval_step, ts.params, ts.state, tensors["val"], 128, batch_fn=batch_fn, pad_label=PAD,
                   distributed=args.distributed)
    figures = dict(val_loss=val["loss"], best_epoch=history.best_epoch, epochs_run=_common.epochs_run(history),
                   params=tree.size(ts.params),
                   vocab=tok.get_vocab_size(), steps=history.rows[-1]["step"])
    if distributed.is_main():   # beam search over the test set: once, on rank 0
        hyps = translate(model, ts.params, ts.state, tok, tensors["test_2016_flickr"][0], args.beam_size,
                         args.max_len)
        with open(os.path.join(args.out, "test_translations.txt"), "w", encoding="utf-8") as f:
            f.writelines(h + "\n" for h in hyps)
        figures = {"test_bleu": bleu(hyps, [p[1] for p in splits["test_2016_flickr"]]), **figures}
    return _common.finish(args, run, **figures)


if __name__ == "__main__":
    main()

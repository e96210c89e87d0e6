"""Train the seed's MLP (batch norm, dropout) on scikit-learn's 8x8 digits, with early stopping.

    python scripts/train_mlp.py --out runs/mlp        # about a minute on 2 CPU cores
    torchrun --nproc_per_node 2 scripts/train_mlp.py --distributed --out runs/mlp_ddp

Writes config.json, history.jsonl, curves.png, checkpoints/ and result.json into --out and
ends with ``RESULT test_acc=... params=... wall_s=...``.
"""

from __future__ import annotations

import argparse

import _common

from deepfn import data, losses, optim, random
from deepfn.models import MLP
from deepfn.train import TrainState, evaluate, fit, make_eval_step, make_train_step


def build_parser():
    p = _common.parser(__doc__.splitlines()[0], epochs=40, batch_size=64, lr=1e-3, out="runs/mlp")
    p.set_defaults(patience=10, smoothing=5)   # as train_cnn.py (here as good as val loss alone)
    p.add_argument("--hidden", type=_common.positive_int, nargs="+", default=[256, 128], help="hidden layer widths")
    p.add_argument("--dropout", type=_common.probability, default=0.2, help="dropout rate after each hidden layer")
    p.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=True,
                   help="batch norm after each hidden layer")
    p.add_argument("--weight-decay", type=_common.nonnegative_float, default=1e-4, help="AdamW decoupled weight decay")
    _common.add_sharding_flag(p)
    return p


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    _common.check_sharding(parser, args)
    run = _common.setup(args)
    dev = run["device"]
    flat = lambda split: tuple(t.to(dev) for t in data.digits(split))  # noqa: E731
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = flat("train"), flat("val"), flat("test")
    x_tr, x_va, x_te = (x.flatten(1) for x in (x_tr, x_va, x_te))
    _common.check_batch_fits(parser, args, x_tr.shape[0])

    model = MLP(x_tr.shape[1], tuple(args.hidden), 10, dropout_rate=args.dropout, batch_norm=args.batch_norm)
    steps_per_epoch = x_tr.shape[0] // args.batch_size
    schedule = optim.cosine_decay(args.lr, args.epochs * steps_per_epoch, alpha=0.05)
    opt = optim.adamw(schedule, weight_decay=args.weight_decay)
    k_init, k_fit = random.split(random.key(args.seed).to(dev))
    ts = _common.to_device(TrainState.create(model, opt, k_init, policy=run["policy"]), dev)
    ts = _common.shard(args, _common.replicate(ts))   # --sharding: this rank's share; fit saves it whole
    step = make_train_step(model, losses.cross_entropy, opt, policy=run["policy"], loss_scale=run["loss_scale"],
                           all_reduce=_common.all_reduce(args), compile=run["compile"],
                           compile_cache=_common.train_step_cache(args, run), lr=schedule,
                           donate=True, sharding=_common.sharding(args))
    step = _common.kill_switch(step)   # the elastic-restart test's hook; the step itself without its env var
    # Eval batches padded to one size with rows labelled PAD_LABEL, which the loss and accuracy leave out.
    eval_step = make_eval_step(model, _common.masked_cross_entropy, policy=run["policy"], compile=run["compile"],
                               compile_cache=run["compile_cache"], ignore_index=_common.PAD_LABEL)

    ts, history = fit(step, ts, (x_tr, y_tr), batch_size=args.batch_size, key=k_fit, eval_step=eval_step,
                      val_data=(x_va, y_va), eval_batch_size=512, eval_pad_label=_common.PAD_LABEL,
                      **_common.fit_kwargs(args, run))
    ts = _common.unshard(ts)
    test = evaluate(eval_step, ts.params, ts.state, (x_te, y_te), 512, pad_label=_common.PAD_LABEL,
                    distributed=args.distributed)
    return _common.finish(args, run, test_acc=test["accuracy"], test_loss=test["loss"],
                          best_epoch=history.best_epoch, epochs_run=_common.epochs_run(history),
                          params=model.num_parameters(), steps=history.rows[-1]["step"])


if __name__ == "__main__":
    main()

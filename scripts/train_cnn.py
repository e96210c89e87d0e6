"""Train AdvancedCNN (residual stages, squeeze-excitation) on 8x8 digits or CIFAR-10.

    python scripts/train_cnn.py --out runs/cnn                       # digits, minutes on 2 CPU cores
    torchrun --nproc_per_node 2 scripts/train_cnn.py --distributed --out runs/cnn_ddp
    python scripts/train_cnn.py --dataset cifar10 --download --augment --out runs/cifar10  # make cifar10

Digits use the 3x3 stride-1 ("cifar") stem, since 8x8 images cannot afford the 7x7 stride-2
stem and max-pool. CIFAR-10 (``--dataset cifar10``) is read from --data-dir, by default the
per-user folder ``~/.cache/deepfn/data/cifar10`` (or ``$DEEPFN_DATA_DIR/cifar10``); with
``--download`` torchvision fetches it there first (about 170 MB, md5-checked). The last
--val-size training images are the validation split. The CIFAR-10 defaults (ResNet-18 widths,
30 epochs, crops and flips with --augment) are untested at full scale: no machine this project
ran on could download the data set, so no accuracy is claimed for them. Writes config.json, history.jsonl, curves.png, checkpoints/ and
result.json into --out and ends with ``RESULT test_acc=... params=... wall_s=...``.
"""

from __future__ import annotations

import _common
import torch

from deepfn import data, distributed, losses, optim, random
from deepfn.models import AdvancedCNN
from deepfn.train import TrainState, evaluate, fit, make_eval_step, make_train_step

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def build_parser():
    p = _common.parser(__doc__.splitlines()[0], epochs=30, batch_size=64, lr=3e-3, out="runs/cnn")
    # The best epoch by the mean val accuracy of 5 epochs: one epoch's read of the 270 digits
    # picked a lucky early epoch (test accuracy 97.0-98.9% over 5 seeds, 98.9-99.6% smoothed;
    # docs/benchmarks.md, "Model selection").
    p.set_defaults(smoothing=5)
    p.add_argument("--dataset", choices=("digits", "cifar10"), default="digits")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 folder (torchvision layout; default: "
                   "$DEEPFN_DATA_DIR/cifar10, else ~/.cache/deepfn/data/cifar10)")
    p.add_argument("--download", action="store_true", help="let torchvision download CIFAR-10 into --data-dir")
    p.add_argument("--val-size", type=_common.positive_int, default=5000,
                   help="cifar10: the last N training images form the validation split")
    p.add_argument("--limit", type=_common.positive_int, default=None, help="use only the first N training examples")
    p.add_argument("--base-channels", type=_common.positive_int, default=None, help="width of stage 1 (default 16 digits, 64 cifar10)")
    p.add_argument("--blocks", type=_common.positive_int, nargs=4, default=None, help="residual blocks per stage (default 1 1 1 1 "
                   "digits, 2 2 2 2 cifar10)")
    p.add_argument("--stem", choices=("cifar", "imagenet"), default="cifar")
    p.add_argument("--dropout", type=_common.probability, default=0.2)
    p.add_argument("--weight-decay", type=_common.nonnegative_float, default=5e-4, help="AdamW decoupled weight decay")
    p.add_argument("--accumulation-steps", type=_common.positive_int, default=1, help="micro-batches per update")
    p.add_argument("--clip-norm", type=_common.positive_float, default=None, help="clip the global gradient norm")
    p.add_argument("--augment", action="store_true",
                   help="random crops (padding 1 for digits, 4 + horizontal flips for cifar10)")
    return p


def load(args, device):
    """``(train, val, test)`` pairs of ``(x float32 [n, c, h, w], y int64 [n])`` on ``device``."""
    if args.dataset == "digits":
        splits = [data.digits(s) for s in ("train", "val", "test")]
    else:
        if not distributed.is_main():
            distributed.barrier()   # rank 0 downloads alone; the others read its files
        x, y = data.cifar10(args.data_dir, train=True, download=args.download)
        x_te, y_te = data.cifar10(args.data_dir, train=False, download=args.download)
        if distributed.is_main():
            distributed.barrier()
        mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
        norm = lambda u8: (u8.float() / 255 - mean) / std  # noqa: E731
        n_val = args.val_size
        if not 0 < n_val < x.shape[0]:
            raise ValueError(f"train_cnn: --val-size must be between 1 and {x.shape[0] - 1} (the training set "
                             f"holds {x.shape[0]} images); got {n_val}")
        # The last n_val training images are the validation split.
        splits = [(norm(x[:-n_val]), y[:-n_val]), (norm(x[-n_val:]), y[-n_val:]), (norm(x_te), y_te)]
    if args.limit is not None:
        splits[0] = tuple(t[:args.limit] for t in splits[0])
    return [tuple(t.to(device) for t in s) for s in splits]


def make_augment(args):
    if not args.augment:
        return None
    padding = 1 if args.dataset == "digits" else 4

    def augment(key, x):
        k_crop, k_flip = random.split(key)
        x = data.random_crop(k_crop, x, padding)
        # Mirrored digits are other glyphs (or none): flip natural images only.
        return x if args.dataset == "digits" else data.random_flip(k_flip, x)

    return augment


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size % args.accumulation_steps:
        parser.error(f"argument --accumulation-steps: must divide --batch-size ({args.batch_size}); "
                     f"got {args.accumulation_steps}")
    run = _common.setup(args)
    dev = run["device"]
    (x_tr, y_tr), val, test_data = load(args, dev)
    _common.check_batch_fits(parser, args, x_tr.shape[0])
    digits = args.dataset == "digits"
    model = AdvancedCNN(input_channels=x_tr.shape[1], num_classes=10,
                        base_channels=args.base_channels or (16 if digits else 64),
                        num_blocks=tuple(args.blocks or ((1, 1, 1, 1) if digits else (2, 2, 2, 2))),
                        dropout_rate=args.dropout, stem=args.stem)
    total = args.epochs * (x_tr.shape[0] // args.batch_size)
    schedule = optim.one_cycle(args.lr, max(total, 1))
    opt = optim.adamw(schedule, weight_decay=args.weight_decay)
    k_init, k_fit = random.split(random.key(args.seed).to(dev))
    ts = _common.replicate(_common.to_device(TrainState.create(model, opt, k_init, policy=run["policy"]), dev))
    step = make_train_step(model, losses.cross_entropy, opt, policy=run["policy"], loss_scale=run["loss_scale"],
                           accumulation_steps=args.accumulation_steps, clip_norm=args.clip_norm,
                           all_reduce=_common.all_reduce(args), compile=run["compile"],
                           compile_cache=run["compile_cache"], lr=schedule,
                           donate=True)
    # Eval batches padded to one size with rows labelled PAD_LABEL, which the loss and accuracy leave out.
    eval_step = make_eval_step(model, _common.masked_cross_entropy, policy=run["policy"], compile=run["compile"],
                               compile_cache=run["compile_cache"], ignore_index=_common.PAD_LABEL)

    ts, history = fit(step, ts, (x_tr, y_tr), batch_size=args.batch_size, key=k_fit, eval_step=eval_step,
                      val_data=val, eval_batch_size=500, eval_pad_label=_common.PAD_LABEL,
                      augment=make_augment(args), monitor="val_accuracy",
                      mode="max", **_common.fit_kwargs(args, run))
    test = evaluate(eval_step, ts.params, ts.state, test_data, 500, pad_label=_common.PAD_LABEL,
                    distributed=args.distributed)
    return _common.finish(args, run, test_acc=test["accuracy"], test_loss=test["loss"],
                          best_epoch=history.best_epoch, epochs_run=_common.epochs_run(history),
                          params=model.num_parameters(), steps=history.rows[-1]["step"])


if __name__ == "__main__":
    main()

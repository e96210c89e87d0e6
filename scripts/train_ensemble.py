"""Train N MLPs at once on 8x8 digits (vmap over stacked parameters); compare the ensemble
with its members on accuracy and calibration (expected calibration error).

    python scripts/train_ensemble.py --out runs/ensemble --members 5     # about a minute on 2 CPU cores

Every member has its own init key and dropout keys and sees the same batches; one compiled
(or eager) step updates all of them. Ends with ``RESULT ensemble_acc=... member_acc=...
ensemble_ece=... member_ece=... wall_s=...``.
"""

from __future__ import annotations

import _common
import torch
import torch.nn.functional as F

from deepfn import data, losses, optim, random
from deepfn.models import MLP
from deepfn.train import ensemble_train_state, evaluate, fit, make_ensemble_train_step


def build_parser():
    p = _common.parser(__doc__.splitlines()[0], epochs=30, batch_size=64, lr=1e-3, out="runs/ensemble")
    p.add_argument("--members", type=_common.positive_int, default=5, help="ensemble size N")
    p.add_argument("--hidden", type=_common.positive_int, nargs="+", default=[128, 64])
    p.add_argument("--dropout", type=_common.probability, default=0.1)
    p.add_argument("--bins", type=_common.positive_int, default=15, help="confidence bins of the calibration error")
    return p


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE: ``sum_b |B|/n * |accuracy(B) - confidence(B)|`` over equal-width confidence bins.

    ``probs [n, classes]``, ``labels [n]`` int64.
    """
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels).float()
    index = torch.clamp((confidence * bins).long(), max=bins - 1)
    total = torch.zeros(bins, dtype=torch.float64, device=probs.device)
    gap = total.index_add(0, index, (correct - confidence).double())
    return (gap.abs().sum() / labels.shape[0]).item()


def member_logits(model, params, state, x):
    """``[n, b, classes]``: every member's evaluation logits for the same ``x [b, features]``."""
    return torch.func.vmap(lambda p, s: model.apply(p, s, x)[0])(params, state)


def make_eval_step(model):
    def eval_step(params, state, batch):
        x, y = batch
        logits = member_logits(model, params, state, x)
        mean = F.softmax(logits, dim=-1).mean(0)   # the ensemble averages probabilities
        return {"loss": F.nll_loss(torch.log(mean.clamp_min(1e-12)), y),
                "accuracy": (mean.argmax(-1) == y).float().mean(),
                "member_accuracy": (logits.argmax(-1) == y).float().mean()}
    return eval_step


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.distributed:
        # The members' steps run under vmap, where a collective cannot go.
        raise SystemExit("train_ensemble.py: --distributed is not supported (the ensemble step has no all_reduce)")
    run = _common.setup(args)
    dev = run["device"]
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = (tuple(t.to(dev) for t in data.digits(s))
                                                for s in ("train", "val", "test"))
    x_tr, x_va, x_te = (x.flatten(1) for x in (x_tr, x_va, x_te))
    _common.check_batch_fits(parser, args, x_tr.shape[0])
    n = args.members
    model = MLP(64, tuple(args.hidden), 10, dropout_rate=args.dropout, batch_norm=True)
    schedule = optim.cosine_decay(args.lr, max(args.epochs * (x_tr.shape[0] // args.batch_size), 1), alpha=0.05)
    opt = optim.adamw(schedule, weight_decay=1e-4)
    k_init, k_fit = random.split(random.key(args.seed).to(dev))
    ts = _common.to_device(ensemble_train_state(model, opt, k_init, n, policy=run["policy"]), dev)
    step = make_ensemble_train_step(model, losses.cross_entropy, opt, policy=run["policy"], compile=run["compile"],
                                    compile_cache=run["compile_cache"])
    eval_step = make_eval_step(model)

    ts, history = fit(step, ts, (x_tr, y_tr), batch_size=args.batch_size, key=k_fit, eval_step=eval_step,
                      val_data=(x_va, y_va), eval_batch_size=500, step_key=lambda k: random.split(k, n),
                      **_common.fit_kwargs(args, run))
    test = evaluate(eval_step, ts.params, ts.state, (x_te, y_te), 500)
    with torch.no_grad():
        probs = F.softmax(member_logits(model, ts.params, ts.state, x_te), dim=-1)   # [n, b, classes]
    member_ece = sum(expected_calibration_error(p, y_te, args.bins) for p in probs) / n
    return _common.finish(args, run, ensemble_acc=test["accuracy"], member_acc=test["member_accuracy"],
                          ensemble_ece=expected_calibration_error(probs.mean(0), y_te, args.bins),
                          member_ece=member_ece, ensemble_nll=test["loss"], members=n,
                          params_per_member=model.num_parameters())


if __name__ == "__main__":
    main()

"""Shared pieces of the training scripts: flags, the output folder, AMP setup, summaries.

Every script takes the same core flags (``--device --seed --compile/--no-compile --amp
--epochs --batch-size --lr --out --resume --max-steps --no-progress``) and writes into
``--out``: ``config.json``, ``history.jsonl``, ``curves.png``, ``checkpoints/`` and
``result.json``, and ends with one ``RESULT key=value ...`` line.

The train and eval steps are compiled by default, on every device (``--no-compile``: eager),
and saved in ``OUT/compiled-steps`` for later runs (``--compile-cache DIR``,
``--no-compile-cache``). A script feeds its steps a few fixed shapes only (full batches,
padded last batches, a few padded sequence widths), so they compile in the first epoch and
never again; each history row counts the programs the epoch's steps compiled or loaded
(``train_compiles``, ``eval_compiles``) and the input shapes they met for the first time
(``train_new_signatures``, ``eval_new_signatures``).

``--distributed`` makes a script data parallel under ``torchrun --nproc_per_node N``:
``--batch-size`` stays the global batch, every rank trains on its shard, and only rank 0
writes files and prints (see docs/guides/distributed.md).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import signal
import sys
import time
import warnings
from typing import Any

import torch

# Scripts run as ``python scripts/x.py`` from anywhere: make the repo's package importable.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from deepfn import amp, distributed, losses, tree  # noqa: E402

REPO_ROOT = _ROOT


# -- flag types: argparse turns an ArgumentTypeError into "argument --flag: <message>", exit 2 --

def _number(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {'an int' if kind is int else 'a number'}; got {text}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number; got {text}")
    return value


def positive_int(text: str) -> int:
    """``type=`` for counts and sizes: an int ``>= 1``."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int; got {text}")
    return value


def nonnegative_int(text: str) -> int:
    """``type=`` for counts where 0 means none or off: an int ``>= 0``."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an int >= 0; got {text}")
    return value


def seed(text: str) -> int:
    """``type=`` for ``--seed``: an int in ``[0, 2**64)`` (``random.key`` keeps 64 bits, so a
    negative seed would alias a large one)."""
    value = _number(text, int)
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"must be an int in [0, 2**64); got {text}")
    return value


def positive_float(text: str) -> float:
    """``type=`` for rates, scales and times: a finite number ``> 0`` (no inf, no nan)."""
    value = _number(text, float)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0; got {text}")
    return value


def nonnegative_float(text: str) -> float:
    """``type=`` for penalties such as weight decay: a finite number ``>= 0``."""
    value = _number(text, float)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0; got {text}")
    return value


def probability(text: str) -> float:
    """``type=`` for dropout rates: a number in ``[0, 1)`` (1 would drop everything)."""
    value = _number(text, float)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1); got {text}")
    return value


def fraction(text: str) -> float:
    """``type=`` for mixing weights: a number in ``[0, 1]``."""
    value = _number(text, float)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1]; got {text}")
    return value


def device(text: str) -> str:
    """``type=`` for ``--device``: a device torch knows and this machine has (``cpu``,
    ``cuda``, ``cuda:N`` with N below the GPU count, ``mps``), returned in torch's spelling."""
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be a torch device such as cpu, cuda or cuda:0; got {text}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"CUDA is not available here; got {text} (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"this machine has {torch.cuda.device_count()} CUDA device(s), "
                                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}; got {text}")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"MPS is not available here; got {text} (use --device cpu)")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"must be cpu, cuda, cuda:N or mps (a device to train on); got {text}")
    return str(dev)


def existing_file(text: str) -> str:
    """``type=`` for input files: a path to an existing regular file."""
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"must be an existing file; got {text}"
                                         + (" (a folder)" if os.path.isdir(text) else " (no such file)"))
    return text


def check_batch_fits(p: argparse.ArgumentParser, args: argparse.Namespace, n_train: int) -> None:
    """``--batch-size`` at most the training set (after ``--limit``), so an epoch has an update;
    a ``parser.error`` (exit 2) naming the flag otherwise."""
    if args.batch_size > n_train:
        p.error(f"argument --batch-size: must be at most the number of training examples ({n_train}); "
                f"got {args.batch_size}")


def parser(description: str, *, epochs: int, batch_size: int, lr: float, out: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the flags every script shares; defaults are the script's."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device to train on")
    p.add_argument("--seed", type=seed, default=0, help="seed of the run's base key (deepfn.random.key)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.compile the train and eval steps, on every device (--no-compile: eager; the "
                        "history's train_compiles / eval_compiles count the programs each step compiled or "
                        "loaded)")
    p.add_argument("--compile-cache", default=None, metavar="DIR",
                   help="when compiling: save the compiled steps in DIR, and load them in later runs with the "
                        "same model and settings instead of tracing the steps again (default: "
                        "OUT/compiled-steps)")
    p.add_argument("--no-compile-cache", dest="compile_cache", action="store_const", const="",
                   help="when compiling: neither save nor load compiled steps")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: bf16 compute on CPU; fp16 with dynamic loss scaling on CUDA")
    p.add_argument("--epochs", type=positive_int, default=epochs, help="maximum number of epochs")
    p.add_argument("--batch-size", type=positive_int, default=batch_size, help="training batch size")
    p.add_argument("--lr", type=positive_float, default=lr, help="peak learning rate")
    p.add_argument("--patience", type=positive_int, default=None, help="early-stopping patience in epochs (off if unset)")
    p.add_argument("--smoothing", type=positive_int, default=1,
                   help="pick the best epoch (and stop early) by the mean of the monitored metric over this many "
                        "epochs, not one epoch's reading of a small validation split (fit's smoothing=)")
    p.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many updates (smoke tests)")
    p.add_argument("--out", default=out, help="output folder: config, history, curves, checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    p.add_argument("--distributed", action="store_true",
                   help="data parallel under `torchrun --nproc_per_node N`: gloo on CPU, NCCL (cuda:LOCAL_RANK) "
                        "on CUDA; --batch-size is the global batch; only rank 0 writes and prints")
    p.add_argument("--dist-timeout", type=positive_float, default=1800.0,
                   help="seconds a collective waits for the other ranks before the job fails")
    return p


def _init_distributed(args: argparse.Namespace) -> torch.device:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available here")
    backend = "nccl" if args.device.startswith("cuda") else "gloo"
    device = distributed.init(backend, timeout=args.dist_timeout)
    if args.batch_size % distributed.world_size():
        world = distributed.world_size()
        distributed.shutdown()
        raise SystemExit(f"--batch-size {args.batch_size} is the global batch: it must be divisible by the "
                         f"number of processes ({world})")
    return device


def setup(args: argparse.Namespace) -> dict[str, Any]:
    """Create ``--out``, write ``config.json``, pick the device, compile flag and AMP policy.

    Returns a dict with ``device``, ``compile``, ``compile_cache`` (a folder or None), ``policy``
    (``amp.Policy`` or None), ``loss_scale`` (``amp.DynamicLossScale`` or None), ``checkpoints``,
    ``history``, ``plot`` (paths) and ``start`` (a ``perf_counter`` value for the wall time).
    """
    start = time.perf_counter()
    device = _init_distributed(args) if args.distributed else torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available here")
    compile_ = bool(args.compile)
    if args.compile_cache and not compile_:
        raise SystemExit(f"--compile-cache {args.compile_cache}: saves compiled steps, but steps are not compiled "
                         f"here (--no-compile); drop --no-compile")
    compile_cache = None
    if compile_ and args.compile_cache != "":
        compile_cache = args.compile_cache or os.path.join(args.out, "compiled-steps")
    policy = loss_scale = None
    if args.amp:
        half = "bfloat16" if device.type == "cpu" else "float16"
        if half == "bfloat16" and amp.bf16_in_hardware(device) is False:
            warnings.warn("--amp: this CPU has no bf16 matrix instructions (AVX-512 BF16 or AMX), so bf16 "
                          "products are emulated and run many times slower than float32 ones; drop --amp here",
                          RuntimeWarning, stacklevel=2)
        policy = amp.Policy("float32", half, "float32")
        if half == "float16":   # fp16's narrow exponent range needs loss scaling; bf16 does not
            loss_scale = to_device(amp.DynamicLossScale(), device)
    config = {k: v for k, v in vars(args).items()}
    config.update(resolved_device=str(device), resolved_compile=compile_, resolved_compile_cache=compile_cache,
                  world_size=distributed.world_size(),
                  policy=None if policy is None else str(policy), torch=torch.__version__,
                  threads=torch.get_num_threads())
    if args.resume and distributed.is_main():
        warn_if_threads_differ(os.path.join(args.out, "config.json"), config["threads"])
    if distributed.is_main():
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, default=str)
    distributed.barrier()   # --out exists before any rank looks into it
    return {"device": device, "compile": compile_, "compile_cache": compile_cache, "policy": policy,
            "loss_scale": loss_scale, "start": start,
            "config": json.loads(json.dumps(config, default=str)),
            "checkpoints": os.path.join(args.out, "checkpoints"),
            "history": os.path.join(args.out, "history.jsonl"), "plot": os.path.join(args.out, "curves.png")}


def warn_if_threads_differ(config_path: str, threads: int) -> None:
    """Warn when the run being resumed recorded another CPU thread count in its ``config.json``.

    Reductions split their work by thread, so float sums round differently with another
    ``OMP_NUM_THREADS`` (as in torch itself): the resumed run is then not bit-identical to
    one that was never interrupted.
    """
    try:
        with open(config_path, encoding="utf-8") as f:
            before = json.load(f).get("threads")
    except (OSError, ValueError, AttributeError):
        return   # no readable config: nothing to compare with
    if isinstance(before, int) and before != threads:
        warnings.warn(f"--resume: this process uses {threads} CPU threads, the run it resumes used {before} "
                      f"({config_path}); float rounding depends on the thread count, so the resumed run will not "
                      f"be bit-identical to an uninterrupted one (set OMP_NUM_THREADS={before} to match)",
                      RuntimeWarning, stacklevel=2)


def epochs_run(history: Any) -> int:
    """The epochs the whole run has trained, counted from the history's rows (each names its
    epoch; a resumed run's history holds the earlier runs' rows too, and an epoch cut short
    by ``--max-steps`` and then finished after a resume has two rows)."""
    return len({row["epoch"] for row in history.rows})


def to_device(x: Any, device: torch.device) -> Any:
    """Every tensor leaf of a pytree (``TrainState`` included) on ``device``."""
    return tree.map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, x)


def replicate(train_state: Any) -> Any:
    """Every rank checks that it built the same tree, then takes rank 0's values (no-op alone)."""
    distributed.check_same_structure(train_state, name="train_state")
    return distributed.broadcast(train_state)


def all_reduce(args: argparse.Namespace) -> Any:
    """The ``all_reduce`` argument of ``make_train_step``: gradient averaging when distributed
    (a sharded step averages its gradients itself)."""
    return distributed.all_reduce_mean if args.distributed and sharding(args) is None else None


SHARDINGS = ("none", "optimizer", "full")


def add_sharding_flag(p: argparse.ArgumentParser) -> None:
    """``--sharding {none,optimizer,full}``, for the scripts that wire it (see :func:`shard`)."""
    p.add_argument("--sharding", choices=SHARDINGS, default="none",
                   help="with --distributed, what each rank keeps between steps: none (the whole train state), "
                        "optimizer (ZeRO-1: 1/N of the optimizer state) or full (ZeRO-3: 1/N of the parameters, "
                        "gradients and optimizer state, each block's parameters gathered while it runs); "
                        "checkpoints stay full files, so --resume works with any --sharding and world size")


def check_sharding(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--sharding`` other than ``none`` needs ``--distributed``: a ``parser.error`` (exit 2) otherwise."""
    if args.sharding != "none" and not args.distributed:
        p.error(f"argument --sharding: {args.sharding} shards the train state over torchrun's processes; "
                f"add --distributed (under torchrun --nproc_per_node N)")


def sharding(args: argparse.Namespace) -> str | None:
    """The ``sharding`` argument of ``make_train_step``: None, ``"optimizer"`` or ``"full"``."""
    chosen = getattr(args, "sharding", "none")
    return None if chosen == "none" else chosen


def shard(args: argparse.Namespace, train_state: Any) -> Any:
    """This rank's share of the (replicated) ``train_state`` under ``--sharding``, else itself."""
    chosen = sharding(args)
    return train_state if chosen is None else distributed.shard(train_state, chosen)


def unshard(train_state: Any) -> Any:
    """The whole train state of a sharded one (a collective: every rank calls it), else itself:
    what a script evaluates and decodes with after ``fit``."""
    return distributed.unshard(train_state) if isinstance(train_state, distributed.ShardedTrainState) else train_state


def train_step_cache(args: argparse.Namespace, run: dict[str, Any]) -> str | None:
    """The ``compile_cache`` of the train step: ``run["compile_cache"]``, except for a sharded step,
    which compiles its pieces apart and saves none of them (the eval step still does)."""
    return None if sharding(args) is not None else run["compile_cache"]


KILL_AT_STEP_ENV = "DEEPFN_TEST_KILL_AT_STEP"


def _kill_target(text: str) -> tuple[int, int]:
    rank_, _, step = text.partition(":")
    try:
        target = int(rank_), int(step)
    except ValueError:
        target = (-1, -1)
    if target[0] < 0 or target[1] < 0:
        raise SystemExit(f"{KILL_AT_STEP_ENV} must be RANK:STEP (two ints >= 0); got {text!r}")
    return target


def kill_switch(train_step: Any) -> Any:
    """A test hook for elastic restarts: ``train_step`` itself unless ``DEEPFN_TEST_KILL_AT_STEP``
    is set in the environment.

    With ``DEEPFN_TEST_KILL_AT_STEP=RANK:STEP``, the process of global rank ``RANK`` kills itself
    with ``SIGKILL`` (as the kernel's out-of-memory killer or a lost node would) just before the
    update it would make from ``train_state.step == STEP``, on torchrun's first attempt only
    (``TORCHELASTIC_RESTART_COUNT`` unset or 0), so the restarted group trains on. Only the
    scripts read it; the library knows nothing of it. The returned step keeps ``train_step``'s
    attributes (``donates``, ``loss_scale``), which ``fit`` reads.
    """
    text = os.environ.get(KILL_AT_STEP_ENV)
    if not text or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return train_step
    target_rank, target_step = _kill_target(text)
    if distributed.rank() != target_rank:
        return train_step

    @functools.wraps(train_step)
    def step(train_state: Any, batch: Any, key: Any) -> Any:
        if int(train_state.step.reshape(-1)[0]) == target_step:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return train_step(train_state, batch, key)

    return step


# The label of the rows that pad a last partial evaluation batch up to the full batch
# (fit's eval_pad_label, evaluate's pad_label): the scripts' eval losses and accuracies leave
# it out, so every evaluation batch has one shape and the metrics are the unpadded ones.
PAD_LABEL = -1


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``losses.cross_entropy`` over the labels other than ``PAD_LABEL``: the eval loss of the
    classification scripts."""
    return losses.cross_entropy(logits, labels, ignore_index=PAD_LABEL)


def log(message: str) -> None:
    """Print above any live progress bar."""
    from tqdm.auto import tqdm
    tqdm.write(message)


def fit_kwargs(args: argparse.Namespace, run: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``deepfn.train.fit`` that come from the shared flags."""
    return dict(epochs=args.epochs, patience=args.patience, smoothing=args.smoothing, max_steps=args.max_steps,
                resume=args.resume,
                checkpoint_dir=run["checkpoints"], history_path=run["history"], plot_path=run["plot"],
                progress=args.progress, log=log, metadata={"config": run["config"]},
                distributed=args.distributed)


def finish(args: argparse.Namespace, run: dict[str, Any], **figures: Any) -> dict[str, Any]:
    """On rank 0, write ``result.json`` and print the one-line ``RESULT`` summary (wall time
    added); then leave the process group, if any."""
    figures["wall_s"] = round(time.perf_counter() - run["start"], 1)
    if distributed.is_main():
        with open(os.path.join(args.out, "result.json"), "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)
        parts = [f"{k}={v:.4f}" if isinstance(v, float) and k != "wall_s" else f"{k}={v}"
                 for k, v in figures.items()]
        print("RESULT " + " ".join(parts), flush=True)
    distributed.shutdown()
    return figures

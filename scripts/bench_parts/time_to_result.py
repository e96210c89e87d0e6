"""Time to result: the whole digits CNN demo job (``make demo``: ``scripts/train_cnn.py``), each
run in a fresh process, so imports, data loading, compiles, evaluation and file writes all count.

Contenders, per seed, one after another (so the machine's drift falls on all of them alike):

- ``compiled-cold``: ``train_cnn.py`` as ``make demo`` runs it (compiled steps), into a fresh
  ``--out`` folder with a fresh, empty ``TORCHINDUCTOR_CACHE_DIR``: a first run.
- ``compiled-warm``: the same command again, into the same ``--out`` (its saved steps in
  ``OUT/compiled-steps``) and the same Inductor cache: a second run of the demo.
- ``eager``: ``train_cnn.py --no-compile``.
- ``torch-compile``: the same job written the usual PyTorch way (``demo_torch_job.py``:
  ``SEResNet`` from deepfn's initial weights of the seed, ``torch.optim.AdamW`` + ``OneCycleLR``,
  ``torch.compile(model)``, a plain loop, the same split, batch, epochs and model selection),
  with a fresh Inductor cache. It writes ``result.json`` and its best weights at the end; the
  demo also writes a checkpoint every epoch, its history and ``curves.png``, as ``make demo`` does.

Each contender's row holds the wall seconds of the whole process (``subprocess`` start to exit)
and the test accuracy, as median and range over the seeds (``runs`` lists every seed's figures,
the script's own ``wall_s`` after its imports too; for the compiled runs ``saved_steps``, the
files in ``OUT/compiled-steps``, and ``saved_steps_written``, how many of them the run wrote:
0 for a warm run that reused them all). The rows compare compiled-cold / eager,
compiled-warm / eager, compiled-cold / torch-compile and eager / torch-compile (ratio of the
medians; ``ratio_range`` spans the per-seed ratios, each pairing two runs of one seed). Issue
target: median test accuracy >= 0.99 over the seeds in at most 0.60 of the eager job's wall
time; the compiled rows say ``met`` or ``missed`` (``target``).

Environment knobs (the defaults are the demo's own job):

- ``DEEPFN_BENCH_SEEDS``: comma-separated seeds (default ``0,1,2,3,4``; quick mode ``0``).
- ``DEEPFN_BENCH_TTR_CONTENDERS``: a comma-separated subset of the contenders above
  (``compiled-warm`` needs ``compiled-cold``).
- ``DEEPFN_BENCH_TTR_EPOCHS``, ``DEEPFN_BENCH_TTR_LIMIT``: ``--epochs`` and ``--limit`` for
  every job (smoke runs; default the script's 30 epochs on all 1,257 training images; quick
  mode 3 epochs). The target is judged only on the demo's own settings.
- ``DEEPFN_BENCH_TTR_TORCH_BACKEND``: ``torch.compile``'s backend in the torch job (default
  ``inductor``; tests use ``eager``).

    python scripts/bench.py --only time_to_result --label time_to_result
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from deepfn import interop, random
from deepfn.models import AdvancedCNN

from . import demo_torch_job as job
from ._workload_models import SEResNet

GROUP = "time_to_result"
CONTENDERS = ("compiled-cold", "compiled-warm", "eager", "torch-compile")
SEEDS_ENV = "DEEPFN_BENCH_SEEDS"
CONTENDERS_ENV = "DEEPFN_BENCH_TTR_CONTENDERS"
EPOCHS_ENV = "DEEPFN_BENCH_TTR_EPOCHS"
LIMIT_ENV = "DEEPFN_BENCH_TTR_LIMIT"
BACKEND_ENV = "DEEPFN_BENCH_TTR_TORCH_BACKEND"
TARGET_ACC = 0.99          # median test accuracy over the seeds, at least
TARGET_WALL_RATIO = 0.60   # of the eager job's median wall time, at most
QUICK_EPOCHS = 3
JOB_TIMEOUT_S = 3 * 3600

BENCH_PARTS = Path(__file__).resolve().parent
REPO = BENCH_PARTS.parent.parent
TRAIN_CNN = REPO / "scripts" / "train_cnn.py"
TORCH_JOB = BENCH_PARTS / "demo_torch_job.py"

LABELS = {"compiled-cold": "deepfn compiled, cold", "compiled-warm": "deepfn compiled, warm",
          "eager": "deepfn --no-compile", "torch-compile": "torch.compile(nn.Module) + torch.optim"}
# (contender, baseline): the rows, in order; a row appears when both ran.
COMPARISONS = (("compiled-cold", "eager"), ("compiled-warm", "eager"), ("compiled-cold", "torch-compile"),
               ("eager", "torch-compile"))


@dataclass(frozen=True)
class Settings:
    """What one run of the part does: seeds, contenders (in ``CONTENDERS`` order), the jobs'
    ``--epochs`` / ``--limit`` (None: the script's default) and the torch job's backend."""
    seeds: tuple[int, ...]
    contenders: tuple[str, ...]
    epochs: int | None = None
    limit: int | None = None
    torch_backend: str = "inductor"

    @property
    def demo_settings(self) -> bool:
        """Whether the jobs run the demo's own settings (the target is judged only then)."""
        return self.epochs is None and self.limit is None and self.torch_backend == "inductor"


def parse_ints(name: str, text: str, low: int) -> list[int]:
    """The comma-separated ints of knob ``name``'s ``text``, each at least ``low``; ValueError names the knob."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated ints; got {text!r}") from None
    if any(v < low for v in values):
        raise ValueError(f"{name} must hold ints >= {low}; got {text!r}")
    return values


def settings(quick: bool = False, env: dict[str, str] | None = None) -> Settings:
    """The part's settings from the environment (``env``, default ``os.environ``); ValueError names a bad knob."""
    env = os.environ if env is None else env
    seeds = parse_ints(SEEDS_ENV, env.get(SEEDS_ENV) or ("0" if quick else "0,1,2,3,4"), 0)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{SEEDS_ENV} must not repeat a seed; got {env.get(SEEDS_ENV)!r}")
    chosen = [c.strip() for c in (env.get(CONTENDERS_ENV) or ",".join(CONTENDERS)).split(",")]
    unknown = [c for c in chosen if c not in CONTENDERS]
    if unknown:
        raise ValueError(f"{CONTENDERS_ENV} must be a comma-separated subset of {list(CONTENDERS)}; got {unknown}")
    if "compiled-warm" in chosen and "compiled-cold" not in chosen:
        raise ValueError(f"{CONTENDERS_ENV}: compiled-warm reruns compiled-cold's out folder, so it needs "
                         f"compiled-cold too; got {chosen}")
    epochs = env.get(EPOCHS_ENV)
    limit = env.get(LIMIT_ENV)
    return Settings(seeds=tuple(seeds), contenders=tuple(c for c in CONTENDERS if c in chosen),
                    epochs=parse_ints(EPOCHS_ENV, epochs, 1)[0] if epochs else (QUICK_EPOCHS if quick else None),
                    limit=parse_ints(LIMIT_ENV, limit, 1)[0] if limit else None,
                    torch_backend=env.get(BACKEND_ENV) or "inductor")


def demo_model(dropout: float = 0.2) -> AdvancedCNN:
    """The demo's network, as ``train_cnn.py`` builds it for the digits."""
    c = job.DemoCNN(dropout_rate=dropout)
    return AdvancedCNN(input_channels=c.input_channels, num_classes=c.num_classes, base_channels=c.base_channels,
                       num_blocks=c.num_blocks, dropout_rate=c.dropout_rate, stem=c.stem)


def initial_weights(seed: int, dropout: float = 0.2) -> dict[str, torch.Tensor]:
    """The demo's initial weights for ``seed`` (``train_cnn.py``: ``model.init`` under the first
    half of ``random.split(random.key(seed))``) as an ``SEResNet`` ``state_dict``."""
    model = demo_model(dropout)
    k_init, _ = random.split(random.key(seed))
    params, state = model.init(k_init)
    return interop.to_torch(model, params, state, SEResNet(job.DemoCNN(dropout_rate=dropout))).state_dict()


def command(contender: str, seed: int, out: str, s: Settings, init_weights: str | None = None) -> list[str]:
    """The command line of one job."""
    extra = [*(["--epochs", str(s.epochs)] if s.epochs else []), *(["--limit", str(s.limit)] if s.limit else [])]
    if contender == "torch-compile":
        weights = ["--init-weights", init_weights] if init_weights else []
        return [sys.executable, str(TORCH_JOB), "--seed", str(seed), "--out", out, *weights,
                "--compile-backend", s.torch_backend, *extra]
    if contender not in CONTENDERS:
        raise ValueError(f"time_to_result: contender must be one of {list(CONTENDERS)}; got {contender!r}")
    compiled = [] if contender != "eager" else ["--no-compile"]
    return [sys.executable, str(TRAIN_CNN), "--seed", str(seed), "--out", out, "--no-progress", *compiled, *extra]


def parse_result(stdout: str) -> dict[str, float]:
    """The numbers of the last ``RESULT k=v ...`` line of a job's output; ValueError when none."""
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise ValueError(f"time_to_result: the job printed no RESULT line; its output ends {stdout[-500:]!r}")
    figures = {}
    for pair in lines[-1].split()[1:]:
        key, _, value = pair.partition("=")
        try:
            figures[key] = float(value)
        except ValueError:
            figures[key] = value
    return figures


def run_job(cmd: list[str], cache_dir: str, metric: str = "test_acc", high: float = 1.0) -> dict[str, float]:
    """Run one job in a fresh process with ``TORCHINDUCTOR_CACHE_DIR=cache_dir``: ``wall_s`` (the
    whole process), ``metric`` (a number in ``[0, high]`` on its RESULT line) and ``script_wall_s``
    (the job's own count, after its imports)."""
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache_dir)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"time_to_result: {' '.join(cmd[1:3])} exited with {done.returncode}: "
                           f"{done.stderr.strip()[-800:]}")
    result = parse_result(done.stdout)
    value = result.get(metric)
    if not isinstance(value, float) or not 0.0 <= value <= high:
        raise ValueError(f"time_to_result: {metric} must be a number in [0, {high:g}]; the job printed {value!r}")
    return {"wall_s": wall, metric: value, "script_wall_s": result.get("wall_s")}


def saved_steps(out: str) -> dict[str, int]:
    """``{file name: modification time in ns}`` of the compiled steps saved in ``OUT/compiled-steps``."""
    folder = Path(out) / "compiled-steps"
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} if folder.is_dir() else {}


def run_seed(seed: int, s: Settings, scratch: str) -> dict[str, dict]:
    """Every chosen contender's figures for one seed (fresh folders under ``scratch``, removed after)."""
    folder = tempfile.mkdtemp(prefix=f"seed{seed}-", dir=scratch)
    try:
        figures: dict[str, dict] = {}
        weights = None
        if "torch-compile" in s.contenders:
            weights = os.path.join(folder, "init.pt")
            torch.save(initial_weights(seed), weights)
        cold_cache = os.path.join(folder, "inductor-cold")
        for contender in s.contenders:
            # warm: the cold run's out folder (saved steps) and Inductor cache; others: fresh ones
            out = os.path.join(folder, "out-compiled" if contender.startswith("compiled") else f"out-{contender}")
            cache = cold_cache if contender.startswith("compiled") else os.path.join(folder, f"inductor-{contender}")
            before = saved_steps(out)
            figures[contender] = {"seed": seed, **run_job(command(contender, seed, out, s, weights), cache)}
            if contender.startswith("compiled"):   # a warm run that reuses them writes none
                after = saved_steps(out)
                figures[contender].update(saved_steps=len(after),
                                          saved_steps_written=sum(after[k] != before.get(k) for k in after))
            print(f"[time_to_result] seed {seed} {contender}: {figures[contender]['wall_s']:.1f} s, "
                  f"test acc {figures[contender]['test_acc']:.4f}", file=sys.stderr, flush=True)
        return figures
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def summarize(runs: list[dict]) -> dict:
    """Median and range of ``wall_s`` and ``test_acc`` over one contender's runs (one per seed)."""
    walls, accs = [r["wall_s"] for r in runs], [r["test_acc"] for r in runs]
    return {"seeds": [r["seed"] for r in runs], "wall_median_s": statistics.median(walls),
            "wall_range_s": [min(walls), max(walls)], "acc_median": statistics.median(accs),
            "acc_range": [min(accs), max(accs)], "runs": runs}


def target(summary: dict, eager: dict, demo_settings: bool) -> dict:
    """The issue's target for one compiled contender against the eager job."""
    acc_ok = summary["acc_median"] >= TARGET_ACC
    wall_ratio = summary["wall_median_s"] / eager["wall_median_s"]
    wall_ok = wall_ratio <= TARGET_WALL_RATIO
    verdict = ("met" if acc_ok and wall_ok else "missed") if demo_settings else "not judged (not the demo's settings)"
    return {"acc_at_least": TARGET_ACC, "wall_ratio_at_most": TARGET_WALL_RATIO, "acc_ok": acc_ok,
            "wall_ok": wall_ok, "verdict": verdict}


def _span(summary: dict) -> str:
    wall, acc = summary["wall_range_s"], summary["acc_range"]
    return (f"wall {summary['wall_median_s']:.1f} s [{wall[0]:.1f}, {wall[1]:.1f}], test acc "
            f"{summary['acc_median']:.4f} [{acc[0]:.4f}, {acc[1]:.4f}]")


def rows(per_seed: list[dict[str, dict]], demo_settings: bool = True) -> list[dict]:
    """The bench rows of the comparisons whose two contenders both ran (see ``COMPARISONS``)."""
    ran = [c for c in CONTENDERS if all(c in seed for seed in per_seed)]
    summaries = {c: summarize([seed[c] for seed in per_seed]) for c in ran}
    n = len(per_seed)
    out = []
    for contender, baseline in COMPARISONS:
        if contender not in summaries or baseline not in summaries:
            continue
        ours, theirs = summaries[contender], summaries[baseline]
        paired = [seed[contender]["wall_s"] / seed[baseline]["wall_s"] for seed in per_seed]
        row = {"group": GROUP, "name": f"digits-cnn demo: {contender} vs {baseline}", "deepfn_s": ours["wall_median_s"],
               "baseline": LABELS[baseline], "baseline_s": theirs["wall_median_s"],
               "ratio": ours["wall_median_s"] / theirs["wall_median_s"],
               "ratio_range": [min(paired), max(paired)], "contender": LABELS[contender],
               "contender_figures": ours, "baseline_figures": theirs}
        note = f"median of {n} seed(s); {_span(ours)}; baseline {_span(theirs)}"
        if contender.startswith("compiled") and baseline == "eager":
            row["target"] = target(ours, theirs, demo_settings)
            note += (f"; target (median acc >= {TARGET_ACC}, wall <= {TARGET_WALL_RATIO} x eager): "
                     f"{row['target']['verdict']}")
        row["note"] = note
        out.append(row)
    return out


def run(quick: bool = False) -> list[dict]:
    s = settings(quick)
    scratch = tempfile.mkdtemp(prefix="deepfn-time-to-result-")
    try:
        per_seed = [run_seed(seed, s, scratch) for seed in s.seeds]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    knobs = {"seeds": list(s.seeds), "epochs": s.epochs, "limit": s.limit, "torch_backend": s.torch_backend}
    return [dict(row, settings=knobs) for row in rows(per_seed, s.demo_settings)]


"""Time to result on Multi30k: the whole translation job (``scripts/train_transformer.py``), each
run in a fresh process with a fresh ``--out`` and Inductor cache, under one time budget.

Contenders, per seed, one after another:

- ``compiled-cold``: ``train_transformer.py`` as its docstring runs it (compiled steps with
  symbolic widths, saved into a fresh ``--out``): a first run.
- ``eager``: the same command with ``--no-compile``.
- ``torch-compile``: the same job with its training written the usual PyTorch way
  (``multi30k_torch_job.py``: ``torch.compile(nn.Module)``, ``torch.autocast``,
  ``torch.optim.Adam`` + ``LambdaLR``, a plain loop; the same data, batches, network, initial
  weights, budget and test decoder).

Every job trains for ``--time-budget-min`` minutes at most (early stopping may end it sooner),
then measures the test BLEU (test_2016_flickr, beam 4, sacrebleu) with its best weights. So
the wall times are close by design and the result is the BLEU each engine reaches in that
time; the rows still hold the wall ratio and judge the project's target for every contender:
test BLEU >= 38 with the whole process in at most 25 minutes. Rows: compiled-cold / eager,
compiled-cold / torch-compile, eager / torch-compile (medians over the seeds; every run's
figures in ``contender_figures``).

Environment knobs:

- ``DEEPFN_BENCH_MULTI30K_DIR``: the folder with Multi30k's ``{split}.{de,en}.gz``. Without
  it the part runs nothing and returns one row saying so (the data is not bundled).
- ``DEEPFN_BENCH_SEEDS``: comma-separated seeds (default ``0``).
- ``DEEPFN_BENCH_MT_CONTENDERS``: a comma-separated subset of the contenders above.
- ``DEEPFN_BENCH_MT_BUDGET_MIN``: every job's ``--time-budget-min`` (default 23; quick mode 1).
- ``DEEPFN_BENCH_MT_AMP``: ``1`` / ``0``: bf16 mixed precision (``--amp``) or float32; default
  ``1`` where this CPU has bf16 instructions (``deepfn.amp.bf16_in_hardware``), else ``0``.
- ``DEEPFN_BENCH_MT_ARGS``: extra flags for every job (smoke runs: ``--limit 256 --d-model 32``).
  The target is judged only without them, on the default budget or less.
- ``DEEPFN_BENCH_TTR_TORCH_BACKEND``: ``torch.compile``'s backend in the torch job (tests: ``eager``).

    DEEPFN_BENCH_MULTI30K_DIR=~/data/multi30k python scripts/bench.py --only time_to_result_multi30k
"""

from __future__ import annotations

import os
import shlex
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from deepfn import amp

from . import time_to_result as ttr

GROUP = "time_to_result"
CONTENDERS = ("compiled-cold", "eager", "torch-compile")
COMPARISONS = (("compiled-cold", "eager"), ("compiled-cold", "torch-compile"), ("eager", "torch-compile"))
DATA_ENV = "DEEPFN_BENCH_MULTI30K_DIR"
CONTENDERS_ENV = "DEEPFN_BENCH_MT_CONTENDERS"
BUDGET_ENV = "DEEPFN_BENCH_MT_BUDGET_MIN"
AMP_ENV = "DEEPFN_BENCH_MT_AMP"
ARGS_ENV = "DEEPFN_BENCH_MT_ARGS"
TARGET_BLEU = 38.0
TARGET_WALL_S = 25 * 60
DEFAULT_BUDGET_MIN, QUICK_BUDGET_MIN = 23.0, 1.0

SCRIPT = ttr.REPO / "scripts" / "train_transformer.py"
TORCH_JOB = ttr.BENCH_PARTS / "multi30k_torch_job.py"
LABELS = {"compiled-cold": "deepfn compiled, cold", "eager": "deepfn --no-compile",
          "torch-compile": "torch.compile(nn.Module) + torch.optim"}


@dataclass(frozen=True)
class Settings:
    """One run of the part: the data folder, seeds, contenders, budget, AMP, extra job flags and
    the torch job's backend."""
    data_dir: str
    seeds: tuple[int, ...]
    contenders: tuple[str, ...]
    budget_min: float
    amp: bool
    extra: tuple[str, ...] = ()
    torch_backend: str = "inductor"

    @property
    def judged(self) -> bool:
        """Whether the jobs run the script's own settings (the target is judged only then)."""
        return not self.extra and self.budget_min <= DEFAULT_BUDGET_MIN and self.torch_backend == "inductor"


def settings(quick: bool = False, env: dict[str, str] | None = None) -> Settings | None:
    """The part's settings from the environment (default ``os.environ``); None without a data
    folder; ValueError names a bad knob."""
    env = os.environ if env is None else env
    data_dir = env.get(DATA_ENV)
    if not data_dir:
        return None
    if not os.path.isdir(data_dir):
        raise ValueError(f"{DATA_ENV} must be a folder with Multi30k's files; got {data_dir!r}")
    seeds = ttr.parse_ints(ttr.SEEDS_ENV, env.get(ttr.SEEDS_ENV) or "0", 0)
    chosen = [c.strip() for c in (env.get(CONTENDERS_ENV) or ",".join(CONTENDERS)).split(",")]
    unknown = [c for c in chosen if c not in CONTENDERS]
    if unknown:
        raise ValueError(f"{CONTENDERS_ENV} must be a comma-separated subset of {list(CONTENDERS)}; got {unknown}")
    text = env.get(BUDGET_ENV)
    try:
        budget = float(text) if text else (QUICK_BUDGET_MIN if quick else DEFAULT_BUDGET_MIN)
    except ValueError:
        raise ValueError(f"{BUDGET_ENV} must be a number of minutes; got {text!r}") from None
    if not budget > 0:
        raise ValueError(f"{BUDGET_ENV} must be positive; got {text!r}")
    amp_text = env.get(AMP_ENV)
    if amp_text not in (None, "", "0", "1"):
        raise ValueError(f"{AMP_ENV} must be 0 or 1; got {amp_text!r}")
    use_amp = amp_text == "1" if amp_text else bool(amp.bf16_in_hardware(torch.device("cpu")))
    return Settings(data_dir=data_dir, seeds=tuple(seeds), contenders=tuple(c for c in CONTENDERS if c in chosen),
                    budget_min=budget, amp=use_amp, extra=tuple(shlex.split(env.get(ARGS_ENV) or "")),
                    torch_backend=env.get(ttr.BACKEND_ENV) or "inductor")


def command(contender: str, seed: int, out: str, s: Settings) -> list[str]:
    """The command line of one job."""
    common = ["--data-dir", s.data_dir, "--seed", str(seed), "--out", out, "--time-budget-min", f"{s.budget_min:g}",
              *(["--amp"] if s.amp else []), *s.extra]
    if contender == "torch-compile":
        return [sys.executable, str(TORCH_JOB), *common, "--compile-backend", s.torch_backend]
    if contender not in CONTENDERS:
        raise ValueError(f"time_to_result_multi30k: contender must be one of {list(CONTENDERS)}; got {contender!r}")
    return [sys.executable, str(SCRIPT), *common, "--no-progress", *(["--no-compile"] if contender == "eager" else [])]


def run_seed(seed: int, s: Settings, scratch: str) -> dict[str, dict]:
    """Every chosen contender's figures for one seed (fresh folders under ``scratch``, removed after)."""
    folder = tempfile.mkdtemp(prefix=f"seed{seed}-", dir=scratch)
    try:
        figures = {}
        for contender in s.contenders:
            out, cache = (os.path.join(folder, f"{what}-{contender}") for what in ("out", "inductor"))
            figures[contender] = {"seed": seed, **ttr.run_job(command(contender, seed, out, s), cache,
                                                              metric="test_bleu", high=100.0)}
            # the per-epoch rows: deepfn's history.jsonl, the torch job's result.json
            for name in ("history.jsonl", "result.json"):
                if (Path(out) / name).is_file():
                    figures[contender]["history"] = (Path(out) / name).read_text()
                    break
            print(f"[time_to_result_multi30k] seed {seed} {contender}: {figures[contender]['wall_s']:.1f} s, "
                  f"test BLEU {figures[contender]['test_bleu']:.2f}", file=sys.stderr, flush=True)
        return figures
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def summarize(runs: list[dict], judged: bool) -> dict:
    """Median and range of wall time and BLEU over one contender's runs, and the target's verdict."""
    walls, bleus = [r["wall_s"] for r in runs], [r["test_bleu"] for r in runs]
    wall, bleu = statistics.median(walls), statistics.median(bleus)
    met = bleu >= TARGET_BLEU and wall <= TARGET_WALL_S
    return {"seeds": [r["seed"] for r in runs], "wall_median_s": wall, "wall_range_s": [min(walls), max(walls)],
            "bleu_median": bleu, "bleu_range": [min(bleus), max(bleus)], "runs": runs,
            "target": ("met" if met else "missed") if judged else "not judged (not the script's settings)"}


def _span(summary: dict) -> str:
    wall, bleu = summary["wall_range_s"], summary["bleu_range"]
    return (f"wall {summary['wall_median_s']:.0f} s [{wall[0]:.0f}, {wall[1]:.0f}], test BLEU "
            f"{summary['bleu_median']:.2f} [{bleu[0]:.2f}, {bleu[1]:.2f}], target {summary['target']}")


def rows(per_seed: list[dict[str, dict]], s: Settings) -> list[dict]:
    """The bench rows of the comparisons whose two contenders both ran."""
    ran = [c for c in CONTENDERS if all(c in seed for seed in per_seed)]
    summaries = {c: summarize([seed[c] for seed in per_seed], s.judged) for c in ran}
    knobs = {"seeds": list(s.seeds), "budget_min": s.budget_min, "amp": s.amp, "extra": list(s.extra),
             "torch_backend": s.torch_backend}
    out = []
    for contender, baseline in COMPARISONS:
        if contender not in summaries or baseline not in summaries:
            continue
        ours, theirs = summaries[contender], summaries[baseline]
        out.append({"group": GROUP, "name": f"multi30k translation: {contender} vs {baseline}",
                    "deepfn_s": ours["wall_median_s"], "baseline": LABELS[baseline],
                    "baseline_s": theirs["wall_median_s"], "ratio": ours["wall_median_s"] / theirs["wall_median_s"],
                    "bleu_difference": ours["bleu_median"] - theirs["bleu_median"],
                    "contender": LABELS[contender], "contender_figures": ours, "baseline_figures": theirs,
                    "settings": knobs,
                    "note": (f"median of {len(per_seed)} seed(s), budget {s.budget_min:g} min, "
                             f"{'bf16' if s.amp else 'fp32'}; {_span(ours)}; baseline {_span(theirs)} "
                             f"(target: BLEU >= {TARGET_BLEU:g} in <= {TARGET_WALL_S // 60} min)")})
    return out


def run(quick: bool = False) -> list[dict]:
    s = settings(quick)
    if s is None:
        return [{"group": GROUP, "name": "multi30k translation: not run", "deepfn_s": None, "baseline": None,
                 "baseline_s": None, "ratio": None,
                 "note": f"set {DATA_ENV} to a folder with Multi30k's files to run this part"}]
    scratch = tempfile.mkdtemp(prefix="deepfn-time-to-result-multi30k-")
    try:
        per_seed = [run_seed(seed, s, scratch) for seed in s.seeds]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return rows(per_seed, s)

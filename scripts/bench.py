"""Run the benchmark parts in ``scripts/bench_parts/`` and report deepfn/baseline time ratios.

Every module ``bench_parts/<group>.py`` (names starting with ``_`` are helpers) exposes
``run(quick: bool = False) -> list[dict]``; each row holds ``group, name, deepfn_s,
baseline, baseline_s, ratio, note`` with ``ratio = deepfn_s / baseline_s`` (below 1:
deepfn is faster). This script prints one table and writes ``<label>.json`` (rows and a
machine description) and ``<label>.md`` into ``--out``.

    python scripts/bench.py --quick --only random optim
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
# Parts are imported as the namespace package ``bench_parts`` (``bench_parts.random`` must not
# shadow the standard library's ``random``), so only scripts/ and the repo go on the path.
for path in (str(REPO), str(SCRIPTS)):
    if path not in sys.path:
        sys.path.insert(0, path)

import torch  # noqa: E402

KEYS = ("group", "name", "deepfn_s", "baseline", "baseline_s", "ratio", "note")


def available_groups() -> list[str]:
    return sorted(p.stem for p in (SCRIPTS / "bench_parts").glob("*.py") if not p.stem.startswith("_"))


def _cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux), else None: results differ across machines."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return None


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    return info


def run_group(group: str, quick: bool) -> list[dict]:
    """Rows of one part; a part that fails yields one row whose note holds the error."""
    start = time.perf_counter()
    try:
        module = importlib.import_module(f"bench_parts.{group}")
        rows = list(module.run(quick=quick))
        for row in rows:
            missing = [k for k in KEYS if k not in row]
            if missing:
                raise ValueError(f"bench_parts/{group}.py: row {row.get('name')!r} lacks {missing}")
    except Exception as exc:  # keep the other parts' numbers
        traceback.print_exc()
        rows = [{"group": group, "name": "FAILED", "deepfn_s": None, "baseline": None,
                 "baseline_s": None, "ratio": None, "note": f"{type(exc).__name__}: {exc}"[:300]}]
    print(f"[bench] {group}: {len(rows)} rows in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return rows


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown(rows: list[dict], info: dict, quick: bool) -> str:
    lines = [
        f"# Benchmarks{' (quick)' if quick else ''}",
        "",
        f"{info['date']} · {info['platform']} · {info['cpu_count']} CPUs · torch {info['torch']} "
        f"({info['torch_threads']} threads){' · ' + info['cuda'] if info['cuda'] else ''}",
        "",
        "ratio = deepfn time / baseline time (medians, same run; below 1 means deepfn is faster).",
        "",
        "| group | name | deepfn s | baseline | baseline s | ratio | note |",
        "| --- | --- | ---: | --- | ---: | ---: | --- |",
    ]
    for r in rows:
        note = str(r.get("note") or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {r['group']} | {r['name']} | {_fmt(r['deepfn_s'])} | {_fmt(r['baseline'])} | "
                     f"{_fmt(r['baseline_s'])} | {_fmt(r['ratio'])} | {note} |")
    return "\n".join(lines) + "\n"


def table(rows: list[dict]) -> str:
    header = ("group", "name", "deepfn s", "baseline", "baseline s", "ratio")
    body = [(r["group"], r["name"], _fmt(r["deepfn_s"]), _fmt(r["baseline"]), _fmt(r["baseline_s"]),
             _fmt(r["ratio"])) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    out = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)) for line in (header, *body)]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    groups = available_groups()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (a smoke run)")
    parser.add_argument("--only", nargs="+", metavar="GROUP", choices=groups,
                        help=f"run only these parts (default: all of {groups})")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"),
                        help="folder for the JSON and markdown results")
    parser.add_argument("--label", help="file name of the results, without suffix (default: the groups run, "
                                        "e.g. 'workloads' or 'all', plus '-quick')")
    parser.add_argument("--keep-compile-cache", action="store_true",
                        help="use the usual on-disk Inductor cache (default: a fresh empty one, and one per "
                             "compiled contender of a workload, so that compile times are cold; warm starts "
                             "are then measured against it)")
    args = parser.parse_args(argv)
    if args.label is not None and (not args.label.strip() or os.sep in args.label or "/" in args.label
                                   or args.label in (".", "..")):
        parser.error(f"argument --label: must be a file name without a folder (results go to --out); got {args.label!r}")
    if not args.keep_compile_cache:
        # Read by Inductor whenever it looks for its cache, so setting it here is early enough.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="deepfn-bench-inductor-")
        os.environ["DEEPFN_BENCH_COLD_CACHES"] = "1"   # workloads: a fresh cache per compiled contender

    selected = args.only or groups
    rows = [row for group in selected for row in run_group(group, args.quick)]
    info = machine()
    print(table(rows))

    label = args.label or ("all" if args.only is None else "-".join(selected)) + ("-quick" if args.quick else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"machine": info, "quick": args.quick, "groups": selected, "rows": rows}
    (out / f"{label}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / f"{label}.md").write_text(markdown(rows, info, args.quick))
    print(f"[bench] wrote {out / (label + '.json')} and {out / (label + '.md')}", file=sys.stderr)
    return 1 if any(r["name"] == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

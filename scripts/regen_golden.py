"""Rewrite the golden parameter trees ``tests/golden/<case>.json`` from ``tests/registry.py``.

Run this only after a deliberate change of parameter names, shapes or dtypes, then review the
diff of ``tests/golden`` like any other code change: the golden tests exist to make such a
change visible. Files of cases no longer in the registry are removed.

Usage::

    python scripts/regen_golden.py               # every case
    python scripts/regen_golden.py Dense MLP     # only these cases
    python scripts/regen_golden.py --check       # report differences, write nothing (exit 1 if any)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# Run as ``python scripts/regen_golden.py`` from anywhere: the repo root holds ``tests``.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests import registry  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="registry case names (default: all)")
    parser.add_argument("--check", action="store_true", help="only report stale files; exit 1 if any")
    args = parser.parse_args(argv)

    unknown = [n for n in args.names if n not in registry.BY_NAME]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; registry cases are {sorted(registry.BY_NAME)}")
    cases = [registry.BY_NAME[n] for n in args.names] if args.names else registry.CASES

    stale = []
    for case in cases:
        path = registry.golden_path(case)
        current = json.loads(path.read_text()) if path.exists() else None
        if current != registry.golden_tree(case):
            stale.append(case.name)
            if not args.check:
                registry.write_golden(case)
    orphans = []
    if not args.names and registry.GOLDEN_DIR.exists():
        orphans = sorted(p for p in registry.GOLDEN_DIR.glob("*.json") if p.stem not in registry.BY_NAME)
        if not args.check:
            for p in orphans:
                p.unlink()

    verb = "stale" if args.check else "rewritten"
    print(f"{len(cases)} case(s) checked; {verb}: {stale or 'none'}; "
          f"orphans {'found' if args.check else 'removed'}: {[p.name for p in orphans] or 'none'}")
    return 1 if args.check and (stale or orphans) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Tally the hostile inputs: ``python -m tests.hostile.count`` (from the repository root).

Prints how many bad inputs were tried, how many gave a clear error (the expected exception
type, a message naming the argument or flag), how many gave another error, and how many
gave a silent result (no error at all).
"""

from __future__ import annotations

import re
import sys
import tempfile
import warnings

from . import cases_blocks, cases_core, cases_lm, cases_scripts, cases_train
from .scripts_runner import run_flags


def tally() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"clear": [], "unclear": [], "silent": []}
    for case in cases_core.CASES + cases_blocks.CASES + cases_train.CASES + cases_lm.CASES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                case.fn()
        except case.exc as error:
            found["clear" if re.search(case.match, str(error)) else "unclear"].append(case.id)
        except Exception as error:  # noqa: BLE001 - a raw error is what this counts
            found["unclear"].append(f"{case.id}: {type(error).__name__}: {error}")
        else:
            found["silent"].append(case.id)
    for case in cases_scripts.CASES:
        code, stderr = run_flags(case)
        if code is None:
            found["silent"].append(case.id)
        else:
            found["clear" if code == 2 and re.search(case.match, stderr) else "unclear"].append(case.id)
    return found


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="deepfn-hostile-") as folder:
        tempfile.tempdir = folder   # the files and --out folders the cases make, removed afterwards
        try:
            found = tally()
        finally:
            tempfile.tempdir = None
    tried = sum(len(v) for v in found.values())
    print(f"inputs tried: {tried} ({len(cases_core.CASES + cases_blocks.CASES + cases_train.CASES + cases_lm.CASES)} API calls, "
          f"{len(cases_scripts.CASES)} script flags); clear errors: {len(found['clear'])}; "
          f"other errors: {len(found['unclear'])}; silent results: {len(found['silent'])}")
    for kind in ("unclear", "silent"):
        for name in found[kind]:
            print(f"  {kind}: {name}")
    return 0 if not found["unclear"] and not found["silent"] else 1


if __name__ == "__main__":
    sys.exit(main())

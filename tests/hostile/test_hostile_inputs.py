"""Every bad input gets a clear error: the exception type and a message naming the argument
(or flag) and what was expected or what came. The cases live in tables (``cases_*.py``);
``python -m tests.hostile.count`` runs them all and prints the tally."""

from __future__ import annotations

import re
import tempfile

import pytest

from . import cases_blocks, cases_core, cases_lm, cases_scripts, cases_train
from .scripts_runner import run_flags

API_CASES = cases_core.CASES + cases_blocks.CASES + cases_train.CASES + cases_lm.CASES


@pytest.fixture(autouse=True)
def _files_under_tmp_path(tmp_path, monkeypatch):
    """Cases that need a file or an --out folder make it with ``tempfile``: inside tmp_path here."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def test_case_ids_are_distinct():
    ids = [c.id for c in API_CASES] + [c.id for c in cases_scripts.CASES]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})


@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_bad_api_input_raises_a_clear_error(case):
    with pytest.raises(case.exc, match=case.match):
        case.fn()


@pytest.mark.parametrize("case", cases_scripts.CASES, ids=[c.id for c in cases_scripts.CASES])
def test_bad_script_flag_exits_like_argparse(case):
    code, stderr = run_flags(case)
    assert code == 2, f"exit code {code!r}; stderr: {stderr}"
    assert re.search(case.match, stderr), stderr

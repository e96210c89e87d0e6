"""Run a script's flags in-process: its own parser, or ``main(argv)`` for the checks that need data."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
import tempfile

from .cases_scripts import FlagCase

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts")
_LOADED: dict[str, object] = {}


def script(name: str):
    """The script module, imported once from its file (the scripts import their ``_common``)."""
    if name not in _LOADED:
        if SCRIPTS not in sys.path:
            sys.path.insert(0, SCRIPTS)
        spec = importlib.util.spec_from_file_location(f"hostile_script_{name}", os.path.join(SCRIPTS, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _LOADED[name] = module
    return _LOADED[name]


def run_flags(case: FlagCase) -> tuple[int | str | None, str]:
    """``(exit code, stderr)`` of parsing (or running) ``case.argv``; the code is None when the
    script accepted the flags (a silent result)."""
    module = script(case.script)
    argv = list(case.argv)
    if case.main:
        argv += ["--out", tempfile.mkdtemp(prefix="deepfn-hostile-")]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            if case.main or not hasattr(module, "build_parser"):
                module.main(argv)
            else:
                module.build_parser().parse_args(argv)
    except SystemExit as done:
        return done.code, err.getvalue()
    return None, err.getvalue()

"""Every public module says what it exports: ``__all__`` lists names that exist."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
from pathlib import Path

import pytest

import deepfn


def _public_modules() -> list[str]:
    names = ["deepfn"]
    for info in pkgutil.walk_packages(deepfn.__path__, "deepfn."):
        if not any(part.startswith("_") for part in info.name.split(".")[1:]):
            names.append(info.name)
    return sorted(names)


PUBLIC_MODULES = _public_modules()


def test_the_walk_finds_the_subpackages():
    # Guards the parametrisation below: an empty or partial walk would pass vacuously.
    for name in ("deepfn.nn", "deepfn.optim", "deepfn.train", "deepfn.nn.dense", "deepfn.testing"):
        assert name in PUBLIC_MODULES


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_module_has_all_and_every_name_exists(name):
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    exported = module.__all__
    assert all(isinstance(n, str) for n in exported), f"{name}.__all__ must hold strings"
    assert len(set(exported)) == len(exported), f"{name}.__all__ lists a name twice"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ lists names the module lacks: {missing}"


@pytest.mark.parametrize("name", [n for n in PUBLIC_MODULES
                                  if hasattr(importlib.import_module(n), "__path__")])
def test_package_exports_every_public_name_it_binds(name):
    # A name re-exported by a package's __init__ but left out of __all__ is missing from
    # help(package) and from the API reference.
    package = importlib.import_module(name)
    bound = {n for n, v in vars(package).items()
             if not n.startswith("_") and not inspect.ismodule(v) and not _from_stdlib_typing(v)}
    assert bound <= set(package.__all__), f"{name}.__all__ lacks {sorted(bound - set(package.__all__))}"


def _from_stdlib_typing(value) -> bool:
    # `from typing import Any` or `from __future__ import annotations` in an __init__.
    return getattr(value, "__module__", None) in ("typing", "collections.abc", "__future__")


def test_help_lists_the_layers_and_optimizers():
    assert {"Dense", "TransformerEncoderLayer", "child_state", "merge_state"} <= set(deepfn.nn.__all__)
    assert {"adamw", "sgd", "chain", "clip_by_global_norm"} <= set(deepfn.optim.__all__)
    assert "Dense(" in pydoc_text(deepfn.nn)


def pydoc_text(module) -> str:
    import pydoc
    return pydoc.render_doc(module, renderer=pydoc.plaintext)


API_PAGES = ["tree", "random", "nn", "models", "optim", "losses", "amp", "train", "distributed",
             "checkpoint", "data", "interop", "testing", "remat"]
DOCS_API = Path(__file__).resolve().parents[1] / "docs" / "api"


@pytest.mark.parametrize("name", API_PAGES)
def test_api_reference_renders_every_public_name(name):
    # mkdocstrings renders a package's __all__, except names that are also submodules (the
    # module shadows the function): those need a directive of their own on the page.
    page = (DOCS_API / f"{name}.md").read_text()
    if name == "remat":   # deepfn.remat is the function of the module deepfn.train.remat
        assert deepfn.remat is deepfn.train.remat
        assert "::: deepfn.train.remat.remat" in page
        return
    assert f"::: deepfn.{name}\n" in page
    package = importlib.import_module(f"deepfn.{name}")
    if not hasattr(package, "__path__"):
        return
    shadowed = [n for n in package.__all__ if importlib.util.find_spec(f"deepfn.{name}.{n}") is not None
                and not inspect.ismodule(getattr(package, n))]
    missing = [n for n in shadowed if f"::: deepfn.{name}.{n}.{n}\n" not in page]
    assert not missing, f"docs/api/{name}.md needs '::: deepfn.{name}.<n>.<n>' for {missing}"

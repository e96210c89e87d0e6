"""A missing optional dependency names the extra that installs it."""

from __future__ import annotations

import sys

import pytest
import torch

from deepfn import data
from deepfn._extras import import_extra
from deepfn.train import plot_history


def _hide(monkeypatch, *modules: str) -> None:
    # A None entry in sys.modules makes `import name` raise ModuleNotFoundError.
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_import_extra_returns_the_module():
    assert import_extra("json", package="json", extra="x", needed_by="f").loads("1") == 1


def test_import_extra_names_the_package_and_extra(monkeypatch):
    _hide(monkeypatch, "json")
    with pytest.raises(ImportError, match=r"^f needs json: pip install 'deepfn\[x\]'$") as info:
        import_extra("json", package="json", extra="x", needed_by="f")
    assert isinstance(info.value.__cause__, ImportError)


def test_digits_without_scikit_learn(monkeypatch):
    _hide(monkeypatch, "sklearn", "sklearn.datasets", "sklearn.model_selection")
    with pytest.raises(ImportError, match=r"deepfn.data.digits needs scikit-learn: pip install 'deepfn\[data\]'"):
        data.digits("val")


def test_plot_history_without_matplotlib(monkeypatch, tmp_path):
    _hide(monkeypatch, "matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg")
    with pytest.raises(ImportError, match=r"deepfn.train.plot_history needs matplotlib: pip install 'deepfn\[plot\]'"):
        plot_history([{"epoch": 1, "train_loss": 1.0}], tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()


def test_core_import_needs_no_extra():
    # `import deepfn` must not pull in an optional package (a core install lacks them).
    import subprocess
    code = ("import sys; import deepfn, deepfn.data, deepfn.train; "
            "print(sorted(m for m in ('sklearn', 'matplotlib', 'tokenizers', 'sacrebleu') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert torch.is_tensor(torch.zeros(1))

"""deepfn.data.cifar10 on tiny files in CIFAR-10's python-pickle batch format.

torchvision verifies every batch file's md5 against the real archive's; the tests write
small fake batches and switch that verification off on the real class (monkeypatch), so
the library code runs unchanged through ``torchvision.datasets.CIFAR10``.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torchvision

from deepfn.data import cifar10

CLS = torchvision.datasets.CIFAR10


def _write_fake(root, per_batch: int = 3) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = root / CLS.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name, _md5 in CLS.train_list + CLS.test_list:
        data = rng.integers(0, 256, size=(per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels}, f)
        written[name] = (data, labels)
    with open(folder / CLS.meta["filename"], "wb") as f:
        pickle.dump({CLS.meta["key"]: [f"class{i}" for i in range(10)]}, f)
    return written


@pytest.fixture
def fake_root(tmp_path, monkeypatch):
    written = _write_fake(tmp_path)
    monkeypatch.setattr(CLS, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)
    return tmp_path, written


def test_train_and_test_tensors(fake_root):
    root, written = fake_root
    x, y = cifar10(root, train=True)
    assert x.dtype == torch.uint8 and x.shape == (15, 3, 32, 32)
    assert y.dtype == torch.int64 and y.shape == (15,)
    xt, yt = cifar10(str(root), train=False)
    assert xt.shape == (3, 3, 32, 32)
    data, labels = written["test_batch"]
    # CIFAR's row layout is 1024 red, then 1024 green, then 1024 blue values: CHW already
    assert torch.equal(xt, torch.from_numpy(data).reshape(3, 3, 32, 32))
    assert yt.tolist() == labels
    first, _ = written["data_batch_1"]
    assert torch.equal(x[:3], torch.from_numpy(first).reshape(3, 3, 32, 32))
    assert x.is_contiguous()


def test_corrupted_files_still_rejected_by_torchvision(tmp_path):
    _write_fake(tmp_path)            # md5 check left on: fake files fail it
    with pytest.raises(RuntimeError, match="corrupted"):
        cifar10(tmp_path, train=True)


def test_missing_files_without_download(tmp_path):
    folder = tmp_path / CLS.base_folder
    with pytest.raises(FileNotFoundError, match=rf"CIFAR-10 not found in {folder}.*download=True"):
        cifar10(tmp_path, train=True)


def test_partially_missing_files_named(tmp_path):
    _write_fake(tmp_path)
    (tmp_path / CLS.base_folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing data_batch_3\); pass download=True"):
        cifar10(tmp_path, train=False)


def test_never_downloads_unless_asked(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(CLS, "download", lambda self: calls.append(self))
    with pytest.raises(FileNotFoundError):
        cifar10(tmp_path, train=True)
    assert calls == []


def test_download_true_goes_to_torchvision(tmp_path, monkeypatch):
    calls = []

    def fake_download(self):
        calls.append(self.root)
        _write_fake(tmp_path)

    monkeypatch.setattr(CLS, "download", fake_download)
    monkeypatch.setattr(CLS, "_check_integrity", lambda self: bool(calls))
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)
    x, _ = cifar10(tmp_path, train=False, download=True)
    assert calls == [str(tmp_path)] and x.shape == (3, 3, 32, 32)


def test_bad_flag_type(tmp_path):
    with pytest.raises(TypeError, match=r"deepfn\.data\.cifar10: train and download must be bool; got 'yes'"):
        cifar10(tmp_path, train="yes")

"""deepfn.data.cifar10 on tiny files in CIFAR-10's python-pickle batch format.

torchvision verifies every batch file's md5 against the real archive's; the tests write
small fake batches and switch that verification off on the real class (monkeypatch), or
point the class at a small archive (and its md5s) served locally, so the library code runs
unchanged through ``torchvision.datasets.CIFAR10``.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from deepfn.data import cifar10
from tests.data.cifar10_fake import CLS, fake_archive, write_fake
from tests.data.local_server import serving


@pytest.fixture
def fake_root(tmp_path, monkeypatch):
    written = write_fake(tmp_path)
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
    write_fake(tmp_path)            # md5 check left on: fake files fail it
    with pytest.raises(RuntimeError, match="corrupted"):
        cifar10(tmp_path, train=True)


def test_missing_files_without_download(tmp_path):
    folder = tmp_path / CLS.base_folder
    with pytest.raises(FileNotFoundError, match=rf"CIFAR-10 not found in {folder}.*download=True"):
        cifar10(tmp_path, train=True)


def test_partially_missing_files_named(tmp_path):
    write_fake(tmp_path)
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
        write_fake(tmp_path)

    monkeypatch.setattr(CLS, "download", fake_download)
    monkeypatch.setattr(CLS, "_check_integrity", lambda self: bool(calls))
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)
    x, _ = cifar10(tmp_path, train=False, download=True)
    assert calls == [str(tmp_path)] and x.shape == (3, 3, 32, 32)


def test_bad_flag_type(tmp_path):
    with pytest.raises(TypeError, match=r"deepfn\.data\.cifar10: train and download must be bool; got 'yes'"):
        cifar10(tmp_path, train="yes")


def test_download_through_torchvision_from_a_local_server(tmp_path, monkeypatch):
    # torchvision's own download, md5 checks and extraction run unchanged; only the class's
    # address and digests point at a small archive served here.
    served = tmp_path / "served"
    served.mkdir()
    attrs = fake_archive(served, per_batch=2)
    for name, value in attrs.items():
        monkeypatch.setattr(CLS, name, value)
    with serving(served) as (server, url):
        monkeypatch.setattr(CLS, "url", url + CLS.filename)
        x, y = cifar10(tmp_path / "root", train=True, download=True)
        assert server.requests[-1] == "/" + CLS.filename
    assert x.shape == (10, 3, 32, 32) and y.shape == (10,)
    assert (tmp_path / "root" / CLS.base_folder / "data_batch_5").is_file()


def test_default_root_is_the_per_user_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFN_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(FileNotFoundError, match=rf"not found in {tmp_path}/data/cifar10/{CLS.base_folder}"):
        cifar10(None, train=True)
    write_fake(tmp_path / "data" / "cifar10")
    monkeypatch.setattr(CLS, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)
    assert cifar10(None, train=False)[0].shape == (3, 3, 32, 32)

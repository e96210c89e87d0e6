"""Small CIFAR-10 folders and archives in the real on-disk format (python-pickle batches).

torchvision checks every file against the real archive's md5; ``fake_archive`` returns the
md5s of its own files so that a test can point torchvision's class at them (monkeypatch)
and run its download, extraction and checks unchanged.
"""

from __future__ import annotations

import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torchvision

CLS = torchvision.datasets.CIFAR10


def write_fake(root: Path, per_batch: int = 3, seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Write ``root/cifar-10-batches-py/`` with ``per_batch`` random images in each of the six
    batch files, and the class names; returns ``{file name: (data uint8 [n, 3072], labels)}``."""
    folder = root / CLS.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
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


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def fake_archive(directory: Path, per_batch: int = 3) -> dict[str, object]:
    """Write ``directory/<CLS.filename>``, a tar.gz of a fake folder as the real archive lays it
    out; returns the class attributes (``tgz_md5``, ``train_list``, ``test_list``, ``meta``)
    that make torchvision accept it."""
    staging = directory / "staging"
    write_fake(staging, per_batch)
    folder = staging / CLS.base_folder
    with tarfile.open(directory / CLS.filename, "w:gz") as tar:
        tar.add(folder, arcname=CLS.base_folder)
    return {
        "tgz_md5": _md5(directory / CLS.filename),
        "train_list": [[name, _md5(folder / name)] for name, _ in CLS.train_list],
        "test_list": [[name, _md5(folder / name)] for name, _ in CLS.test_list],
        "meta": {**CLS.meta, "md5": _md5(folder / CLS.meta["filename"])},
    }

"""CIFAR-10 through ``torchvision.datasets.CIFAR10``, as two whole tensors.

torchvision reads and verifies (md5) the python-pickle batches; this loader only turns
them into tensors and refuses to download unless asked, with an error that says where
it looked and how to fetch the files.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ._download import data_home

__all__ = ["cifar10"]


def _dataset_class() -> type:
    # Imported on use: torchvision pulls in torch._dynamo and more, which `import deepfn`
    # should not pay for.
    import torchvision.datasets

    return torchvision.datasets.CIFAR10


def _missing_files(root: Path) -> list[str]:
    cls = _dataset_class()
    folder = root / cls.base_folder
    names = [name for name, _md5 in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return [name for name in names if not (folder / name).is_file()]


def cifar10(root: str | Path | None, train: bool, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The CIFAR-10 training (50,000 images) or test (10,000 images) set.

    Args:
        root: the folder that holds (or will hold) ``cifar-10-batches-py/``; None is the
            per-user folder, ``$DEEPFN_DATA_DIR/cifar10`` or else ``~/.cache/deepfn/data/cifar10``.
        train: the training set if True, else the test set.
        download: fetch and extract the archive into ``root`` when files are missing.
            Never done unless asked.

    Returns:
        ``(x, y)``: ``x`` uint8 ``[b, 3, 32, 32]`` (channels first, as ``torch.nn.Conv2d``
        expects), ``y`` int64 ``[b]`` class ids 0-9.

    Raises:
        FileNotFoundError: files are missing and ``download`` is False.
        RuntimeError: from torchvision, when files are present but fail the md5 check.
    """
    if not isinstance(train, bool) or not isinstance(download, bool):
        raise TypeError(f"deepfn.data.cifar10: train and download must be bool; got {train!r}, {download!r}")
    root = data_home("cifar10") if root is None else Path(root).expanduser()
    missing = _missing_files(root)
    if missing and not download:
        folder = root / _dataset_class().base_folder
        raise FileNotFoundError(
            f"deepfn.data.cifar10: CIFAR-10 not found in {folder} (missing {', '.join(missing)}); "
            f"pass download=True to fetch it into {root}"
        )
    dataset = _dataset_class()(str(root), train=train, download=download)
    # torchvision keeps images as numpy [b, 32, 32, 3] (HWC); convolutions want CHW.
    x = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    y = torch.as_tensor(dataset.targets, dtype=torch.int64)
    return x, y

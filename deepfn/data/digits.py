"""scikit-learn's bundled 8x8 handwritten digits with a fixed, stratified three-way split.

The data ship inside scikit-learn, so this loader never touches the network. The split is
70 % train, 15 % validation, 15 % test, stratified by class with fixed seeds: the same
images land in the same split on every machine, the three are disjoint and together
hold all 1,797 images.
"""

from __future__ import annotations

import numpy as np
import torch

from .._extras import import_extra

__all__ = ["SPLITS", "digits"]

SPLITS = ("train", "val", "test")
_SEED = 0


def _sklearn(module: str):
    return import_extra(module, package="scikit-learn", extra="data", needed_by="deepfn.data.digits")


def _split_indices() -> dict[str, np.ndarray]:
    train_test_split = _sklearn("sklearn.model_selection").train_test_split
    y = _sklearn("sklearn.datasets").load_digits().target
    idx = np.arange(len(y))
    train, rest = train_test_split(idx, test_size=0.30, random_state=_SEED, stratify=y)
    val, test = train_test_split(rest, test_size=0.50, random_state=_SEED, stratify=y[rest])
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of the digits data set.

    Args:
        split: ``"train"`` (1,257 images), ``"val"`` (270) or ``"test"`` (270).

    Returns:
        ``(x, y)``: ``x`` float32 ``[b, 1, 8, 8]``, pixel intensities 0-16 divided by 16
        (so in ``[0, 1]``); ``y`` int64 ``[b]``, the digit 0-9.

    Raises:
        ValueError: ``split`` is not one of the three names.

    Examples:
        >>> x, y = digits("val")
        >>> x.shape, y.dtype
        (torch.Size([270, 1, 8, 8]), torch.int64)
    """
    if split not in SPLITS:
        raise ValueError(f"deepfn.data.digits: split must be one of {list(SPLITS)}; got {split!r}")
    bunch = _sklearn("sklearn.datasets").load_digits()
    rows = _split_indices()[split]
    x = torch.from_numpy(bunch.data[rows].astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(bunch.target[rows].astype(np.int64))
    return x, y

"""deepfn.data.digits against scikit-learn's bundled data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from deepfn.data import digits

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def splits():
    return {s: digits(s) for s in SPLITS}


def test_shapes_dtypes_and_range(splits):
    for x, y in splits.values():
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8)
        assert y.dtype == torch.int64 and y.shape == (x.shape[0],)
        assert x.min() == 0.0 and x.max() == 1.0
        assert set(y.unique().tolist()) == set(range(10))
    assert [splits[s][0].shape[0] for s in SPLITS] == [1257, 270, 270]


def _rows(x: torch.Tensor, y: torch.Tensor) -> list[bytes]:
    return [xi.numpy().tobytes() + bytes([int(yi)]) for xi, yi in zip(x, y, strict=True)]


def test_disjoint_and_covering_all_images(splits):
    bunch = load_digits()
    every = torch.from_numpy(bunch.data.astype(np.float32) / 16).reshape(-1, 1, 8, 8)
    labels = torch.from_numpy(bunch.target)
    from collections import Counter
    union = Counter()
    for x, y in splits.values():
        union.update(_rows(x, y))
    # the data set holds a few duplicate images, so compare multisets, not sets
    assert union == Counter(_rows(every, labels))
    assert sum(splits[s][0].shape[0] for s in SPLITS) == 1797


def test_pixels_are_sixteenths(splits):
    x = splits["train"][0]
    assert torch.equal(x * 16, torch.round(x * 16))


def test_stratified(splits):
    whole = np.bincount(load_digits().target) / 1797
    for _x, y in splits.values():
        frac = torch.bincount(y, minlength=10).numpy() / len(y)
        assert np.abs(frac - whole).max() < 0.01


def test_fixed_across_calls():
    a, b = digits("val"), digits("val")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_labels_match_images():
    bunch = load_digits()
    x, y = digits("test")
    flat = (x.reshape(len(x), 64).double() * 16).numpy()
    for i in (0, 17, 269):
        j = int(np.flatnonzero((bunch.data == flat[i]).all(axis=1))[0])
        assert bunch.target[j] == int(y[i])


def test_bad_split():
    with pytest.raises(ValueError, match=r"deepfn\.data\.digits: split must be one of \['train', 'val', 'test'\]; got 'valid'"):
        digits("valid")

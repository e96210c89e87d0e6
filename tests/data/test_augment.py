"""deepfn.data.random_crop / random_flip: purity, determinism, slow reference loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from deepfn import random
from deepfn.data import random_crop, random_flip


def _images(b=6, c=3, h=5, w=7, dtype=torch.float32):
    return (torch.arange(b * c * h * w) + 1).reshape(b, c, h, w).to(dtype)


def _crop_reference(key, images, padding):
    """One image at a time, with the same offsets the function draws."""
    b, _, h, w = images.shape
    offsets = random.randint(key, (b, 2), 0, 2 * padding + 1)
    out = []
    for i in range(b):
        padded = F.pad(images[i], (padding,) * 4)
        oy, ox = offsets[i].tolist()
        out.append(padded[:, oy:oy + h, ox:ox + w])
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.uint8])
@pytest.mark.parametrize("padding", [0, 1, 4])
def test_crop_equals_reference_loop(dtype, padding):
    images = _images(dtype=dtype)
    k = random.key(1)
    got = random_crop(k, images, padding)
    assert got.dtype == dtype and got.shape == images.shape
    assert torch.equal(got, _crop_reference(k, images, padding))


def test_crop_offsets_vary_and_padding_is_zero():
    images = _images(b=64)
    out = random_crop(random.key(0), images, 2)
    shifted = [(o != images[i]).any().item() for i, o in enumerate(out)]
    assert 0 < sum(shifted) < 64                 # P(no shift) = 1/25 per image
    assert (out == 0).any()                      # some pixels come from the zero padding
    assert torch.equal(random_crop(random.key(0), images, 0), images)


def test_crop_pure_and_deterministic():
    images = _images()
    before = images.clone()
    k = random.key(5)
    a, b = random_crop(k, images, 2), random_crop(k, images, 2)
    assert torch.equal(a, b) and torch.equal(images, before) and images._version == 0
    assert not torch.equal(a, random_crop(random.key(6), images, 2))


def test_flip_matches_reference_and_is_pure():
    images = _images(b=32)
    before = images.clone()
    k = random.key(2)
    out = random_flip(k, images)
    mask = random.bernoulli(k, 0.5, (32,))
    for i in range(32):
        assert torch.equal(out[i], images[i].flip(-1) if mask[i] else images[i])
    assert 0 < mask.sum() < 32
    assert torch.equal(images, before) and torch.equal(out, random_flip(k, images))


def test_flip_probability_edges_and_frequency():
    images = _images(b=4)
    assert torch.equal(random_flip(random.key(0), images, p=0.0), images)
    assert torch.equal(random_flip(random.key(0), images, p=1.0), images.flip(-1))
    many = torch.arange(2000.0)[:, None, None, None] * torch.tensor([1.0, 2.0])  # [2000, 1, 1, 2]
    flipped = (random_flip(random.key(0), many, p=0.2)[..., 0] != many[..., 0]).float().mean()
    assert abs(flipped - 0.2) < 0.05


def test_compiled_and_vmapped_augmentation_equal_eager():
    images = _images(b=2, c=1, h=3, w=3)
    k = random.key(7)
    fn = torch.compile(lambda k, x: random_flip(k, random_crop(k, x, 1)), fullgraph=True)
    assert torch.equal(fn(k, images), random_flip(k, random_crop(k, images, 1)))
    keys = random.split(k, 3)
    batched = torch.func.vmap(lambda kk: random_crop(kk, images, 1))(keys)
    assert torch.equal(batched, torch.stack([random_crop(kk, images, 1) for kk in keys]))


@given(b=st.integers(1, 4), c=st.integers(1, 3), h=st.integers(1, 6), w=st.integers(1, 6),
       padding=st.integers(0, 3), seed=st.integers(0, 2**32))
def test_property_crop_reference(b, c, h, w, padding, seed):
    images = _images(b, c, h, w)
    assert torch.equal(random_crop(random.key(seed), images, padding),
                       _crop_reference(random.key(seed), images, padding))


@pytest.mark.parametrize("call, exc, match", [
    (lambda: random_crop(random.key(0), torch.ones(3, 4, 4), 1), ValueError, r"deepfn\.data\.random_crop: images must be 4-d \[B, C, H, W\]; got float32 \[3, 4, 4\]"),
    (lambda: random_crop(random.key(0), torch.ones(1, 1, 4, 4), -1), ValueError, r"random_crop: padding must be a non-negative int; got -1"),
    (lambda: random_crop(torch.zeros(2), torch.ones(1, 1, 4, 4), 1), TypeError, r"random_crop: key must be an int64 tensor \[2\]"),
    (lambda: random_flip(random.key(0), torch.ones(4, 4)), ValueError, r"deepfn\.data\.random_flip: images must be 4-d"),
    (lambda: random_flip(random.key(0), torch.ones(1, 1, 4, 4), p=1.5), ValueError, r"random_flip: p must be a float in \[0, 1\]; got 1\.5"),
    (lambda: random_flip(None, torch.ones(1, 1, 4, 4)), TypeError, r"random_flip: key must be an int64 tensor"),
], ids=["crop-rank", "crop-padding", "crop-key", "flip-rank", "flip-p", "flip-key"])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()

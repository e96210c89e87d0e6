"""Padding to a few shapes: rows up to the full batch with ignored labels, widths up to buckets."""

import pytest
import torch

from deepfn.data.padding import bucket_width, bucket_widths, pad_rows, pad_width


def test_pad_rows_copies_the_first_row_and_sets_the_label():
    x, y = torch.arange(6.0).reshape(3, 2), torch.tensor([4, 5, 6])
    (px,), py = pad_rows(((x,), y), 5, -1)
    assert torch.equal(px, torch.tensor([[0.0, 1], [2, 3], [4, 5], [0, 1], [0, 1]]))
    assert torch.equal(py, torch.tensor([4, 5, 6, -1, -1]))
    tokens = torch.tensor([[1, 2, 0], [3, 0, 0]])
    px, py = pad_rows((tokens, tokens), 3, 0)
    assert torch.equal(px[2], tokens[0]) and torch.equal(py[2], torch.zeros(3, dtype=torch.int64))


def test_pad_rows_keeps_a_full_batch():
    x, y = torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64)
    px, py = pad_rows((x, y), 4, -1)
    assert px is x and py is y


def test_pad_rows_rejects_a_batch_that_is_not_a_pair():
    with pytest.raises(TypeError, match=r"pad_rows: batch must be a pair"):
        pad_rows(torch.zeros(2, 2), 4, -1)


def test_pad_rows_rejects_float_labels():
    with pytest.raises(TypeError, match=r"labels must be integer class ids"):
        pad_rows((torch.zeros(2, 2), torch.zeros(2)), 4, -1)


def test_pad_rows_rejects_unequal_leading_sizes():
    with pytest.raises(ValueError, match=r"same leading size"):
        pad_rows((torch.zeros(3, 2), torch.zeros(2, dtype=torch.int64)), 4, -1)


def test_pad_rows_rejects_a_bad_row_count():
    with pytest.raises(ValueError, match=r"rows must be a positive int; got 0"):
        pad_rows((torch.zeros(2, 2), torch.zeros(2, dtype=torch.int64)), 0, -1)


def test_bucket_widths():
    assert bucket_widths(64) == (16, 32, 48, 64)
    assert bucket_widths(12) == (8, 12)
    assert bucket_widths(64, 2) == (32, 64) and bucket_widths(5, 1) == (5,)


def test_bucket_widths_rejects_a_bad_count():
    with pytest.raises(ValueError, match=r"count must be a positive int; got 0"):
        bucket_widths(64, 0)


def test_bucket_width_is_the_smallest_that_holds():
    assert [bucket_width(n, (16, 32, 48)) for n in (1, 16, 17, 48)] == [16, 16, 32, 48]


def test_bucket_width_rejects_a_length_beyond_every_width():
    with pytest.raises(ValueError, match=r"length 49 exceeds the largest width"):
        bucket_width(49, (16, 32, 48))


def test_pad_width_pads_and_cuts():
    t = torch.tensor([[5, 6, 0], [7, 0, 0]])
    assert torch.equal(pad_width(t, 5, 0), torch.tensor([[5, 6, 0, 0, 0], [7, 0, 0, 0, 0]]))
    assert torch.equal(pad_width(t, 2, 0), t[:, :2])


def test_pad_width_rejects_a_1d_tensor():
    with pytest.raises(ValueError, match=r"tokens must be a 2-D tensor"):
        pad_width(torch.zeros(3), 4, 0)

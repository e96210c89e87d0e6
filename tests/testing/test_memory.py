"""deepfn.testing.allocated: bytes a call allocates, peak and kept, from the profiler."""

from __future__ import annotations

import pytest
import torch

from deepfn.testing import allocated

KIB = 1024


def test_a_temporary_counts_in_the_peak_and_not_in_what_is_kept():
    peak, kept = allocated(lambda: torch.ones(16 * KIB, dtype=torch.float32).sum())
    assert 64 * KIB <= peak < 65 * KIB and kept == 0


def test_what_the_call_keeps_alive_is_kept():
    box = []
    peak, kept = allocated(lambda: box.append(torch.ones(32 * KIB, dtype=torch.uint8)))
    assert peak == kept == 32 * KIB


def test_the_peak_is_the_most_alive_at_once_not_the_sum():
    def two_at_a_time():
        a = torch.empty(16 * KIB, dtype=torch.uint8)
        b = torch.empty(16 * KIB, dtype=torch.uint8)
        del a
        c = torch.empty(16 * KIB, dtype=torch.uint8)
        return b, c

    peak, kept = allocated(two_at_a_time)
    assert peak == 32 * KIB and kept == 0   # b and c are returned, then dropped by the caller


def test_memory_from_before_the_call_is_left_out():
    old = [torch.ones(8 * KIB, dtype=torch.uint8)]
    peak, kept = allocated(lambda: old.clear())
    assert peak == 0 and kept == 0


@pytest.mark.parametrize("repeats", [0, -1, 1.5, True, "2"])
def test_bad_repeats_are_rejected(repeats):
    with pytest.raises(ValueError, match=r"repeats must be a positive int; got"):
        allocated(lambda: None, repeats=repeats)

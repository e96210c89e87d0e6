"""Shared fixtures: hypothesis profiles, keys, deterministic torch settings."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from deepfn import random

settings.register_profile(
    "ci", max_examples=15, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev", max_examples=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def getkey():
    """``getkey()`` returns a fresh key each call (split from seed 0 by a counter)."""
    base = random.key(0)
    count = iter(range(10**6))
    return lambda: random.fold_in(base, next(count))


@pytest.fixture(params=[torch.float32, torch.float64], ids=["fp32", "fp64"])
def dtype(request):
    return request.param

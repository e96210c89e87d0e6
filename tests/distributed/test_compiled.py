"""The default ``make_train_step(compile=True)`` compiles the whole step with
``all_reduce_mean`` inside (fullgraph): two gloo processes still equal one process."""

from __future__ import annotations

import torch

from ..utils import assert_trees_close
from . import scenarios
from .test_multiprocess import launch


def test_compiled_data_parallel_step_equals_single_process(tmp_path):
    proc, _ = launch("compiled", tmp_path, wall_s=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reference = scenarios.train("adamw_accum_scaled_clipped")
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert_trees_close(got["params"], reference["params"], rtol=1e-5, atol=1e-6)

"""Test helpers: tree comparison that names the first failing leaf's path."""

from __future__ import annotations

import torch

from deepfn import tree

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}


def assert_trees_close(actual, expected, *, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Assert equal structure and close leaves; the message names the path and the largest error."""
    fa, fe = tree.flatten(actual), tree.flatten(expected)
    assert set(fa) == set(fe), f"tree keys differ: only actual {sorted(set(fa) - set(fe))}, only expected {sorted(set(fe) - set(fa))}"
    for path in fa:
        a, e = fa[path], fe[path]
        if isinstance(a, torch.Tensor):
            assert a.shape == e.shape, f"{path}: shape {list(a.shape)} != {list(e.shape)}"
            assert a.dtype == e.dtype, f"{path}: dtype {a.dtype} != {e.dtype}"
            if not torch.allclose(a, e, rtol=rtol, atol=atol, equal_nan=True):
                err = (a.double() - e.double()).abs()
                raise AssertionError(f"{path}: max abs error {err.max().item():.3e} at index {tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))}")
        else:
            assert a == e, f"{path}: {a!r} != {e!r}"

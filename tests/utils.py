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


def assert_apply_pure(block, params, state, *inputs) -> None:
    """``apply(train=True)`` of a stateless block leaves inputs and params untouched (values and
    in-place version counters) and returns the very state it was given."""
    tensors = (*inputs, *tree.leaves(params))
    before = [(t.clone(), t._version) for t in tensors]
    _, out_state = block.apply(params, state, *inputs, train=True)
    assert out_state is state
    for t, (value, version) in zip(tensors, before, strict=True):
        assert torch.equal(t, value) and t._version == version

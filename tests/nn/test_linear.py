"""deepfn.nn._linear.linear: F.linear eagerly, bit for bit; symbolic batch dimensions when a
gradient of it is compiled (torch 2.14's F.linear pins them under torch.func.grad)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.testing
import torch.nn.functional as F

from deepfn.nn._linear import linear

WIDTHS = (10, 13, 19, 16)


@pytest.fixture(autouse=True)
def _fresh_compiler():
    torch.compiler.reset()   # the tests' inner functions share code objects: count each test's own compiles
    yield
    torch.compiler.reset()


def _frames(fn, make_x) -> int:
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(fn, backend=counter, fullgraph=True)
    for width in WIDTHS:
        compiled(torch.randn(6, 4), torch.randn(6), make_x(width))
    return counter.frame_count


@pytest.mark.parametrize("shape", [(4,), (3, 4), (2, 5, 4), (2, 3, 5, 4)])
@pytest.mark.parametrize("bias", [True, False])
def test_eager_calls_are_f_linear_bit_for_bit(shape, bias):
    x, w = torch.randn(shape), torch.randn(6, 4)
    b = torch.randn(6) if bias else None
    assert torch.equal(linear(x, w, b), F.linear(x, w, b))
    xt = torch.randn(*shape[:-1][::-1], 4).transpose(0, -2) if len(shape) > 2 else x
    assert torch.equal(linear(xt, w, b), F.linear(xt, w, b))


def test_the_gradient_compiles_once_for_all_sequence_lengths():
    def loss(w, b, x):
        return linear(x, w, b).sum()

    assert _frames(torch.func.grad(loss), lambda t: torch.randn(2, t, 4)) == 2   # static, then dynamic


def test_f_linear_still_pins_the_lengths_under_grad_on_this_torch():
    """Why deepfn has its own: when this fails, torch keeps the sizes symbolic and linear can go."""
    def loss(w, b, x):
        return F.linear(x, w, b).sum()

    assert _frames(torch.func.grad(loss), lambda t: torch.randn(2, t, 4)) == len(WIDTHS)
    assert _frames(loss, lambda t: torch.randn(2, t, 4)) == 2


@pytest.mark.parametrize("shape", [(3, 4), (2, 5, 4), (2, 3, 5, 4)])
def test_compiled_values_and_gradients_match_eager(shape):
    gen = torch.Generator().manual_seed(0)
    w, b, x = (torch.randn(s, generator=gen) for s in ((6, 4), (6,), shape))

    def loss(w, b, x):
        return (linear(x, w, b) ** 2).sum()

    want = torch.func.grad(loss, argnums=(0, 1, 2))(w, b, x)
    got = torch.compile(torch.func.grad(loss, argnums=(0, 1, 2)), fullgraph=True)(w, b, x)
    for g, e in zip(got, want, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)   # float rounding of the fused sums

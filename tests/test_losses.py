"""Losses against torch.nn.functional (values and gradients), classes on the last axis."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.func import grad, vmap

from deepfn import losses


def _ce_twin(logits, labels, **kw):
    """F.cross_entropy wants classes on axis 1: move deepfn's last axis there."""
    if logits.ndim > 2:
        logits = logits.movedim(-1, 1)
    if kw.get("ignore_index") is None:
        kw.pop("ignore_index", None)
    return F.cross_entropy(logits, labels, **kw)


@given(
    n=st.integers(1, 5), extra=st.lists(st.integers(1, 4), max_size=2), c=st.integers(2, 7),
    smoothing=st.sampled_from([0.0, 0.1, 0.5]), reduction=st.sampled_from(["mean", "sum", "none"]),
    use_ignore=st.booleans(), seed=st.integers(0, 2**16), dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_cross_entropy_matches_torch(n, extra, c, smoothing, reduction, use_ignore, seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    shape = (n, *extra)
    logits = (3 * torch.randn(*shape, c, generator=gen, dtype=dtype)).requires_grad_()
    labels = torch.randint(0, c, shape, generator=gen)
    ignore = None
    if use_ignore:
        ignore = -1
        labels = torch.where(torch.rand(shape, generator=gen) < 0.3, -1, labels)
        labels.view(-1)[0] = 0                                   # keep the mean defined
    kw = dict(label_smoothing=smoothing, ignore_index=ignore, reduction=reduction)
    ours = losses.cross_entropy(logits, labels, **kw)
    ref = _ce_twin(logits, labels, **kw)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    assert ours.shape == ref.shape and ours.dtype == dtype
    torch.testing.assert_close(ours, ref, **tol)
    g1, = torch.autograd.grad(ours.sum(), logits)
    g2, = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(g1, g2, **tol)


def test_cross_entropy_grad_under_func_grad_and_vmap():
    logits = torch.randn(4, 3, 5, dtype=torch.float64)
    labels = torch.randint(0, 5, (4, 3))
    g = grad(lambda x: losses.cross_entropy(x, labels, label_smoothing=0.1))(logits)
    x = logits.clone().requires_grad_()
    ref, = torch.autograd.grad(_ce_twin(x, labels, label_smoothing=0.1), x)
    torch.testing.assert_close(g, ref, rtol=1e-12, atol=1e-12)
    per_example = vmap(lambda x, y: losses.cross_entropy(x, y))(logits, labels)
    torch.testing.assert_close(per_example, F.cross_entropy(logits.movedim(-1, 1), labels, reduction="none").mean(1))


def test_cross_entropy_finite_for_huge_logits():
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], requires_grad=True)
    labels = torch.tensor([1, 0])
    loss = losses.cross_entropy(logits, labels, label_smoothing=0.1)
    g, = torch.autograd.grad(loss, logits)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels, label_smoothing=0.1))


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_cross_entropy_half_inputs_computed_in_fp32(half):
    logits = torch.randn(8, 10) * 4
    labels = torch.randint(0, 10, (8,))
    out = losses.cross_entropy(logits.to(half), labels)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, F.cross_entropy(logits.to(half).float(), labels))


def test_cross_entropy_compiles():
    f = torch.compile(lambda x, y: losses.cross_entropy(x, y, ignore_index=0), fullgraph=True)
    x, y = torch.randn(3, 4, 6), torch.randint(0, 6, (3, 4))
    torch.testing.assert_close(f(x, y), _ce_twin(x, y, ignore_index=0))


@pytest.mark.parametrize("labels, exc, match", [
    (torch.tensor([0.0, 1.0]), TypeError, r"labels must be an integer tensor .*; got float32 \[2\]"),
    (torch.tensor([True, False]), TypeError, "labels must be an integer tensor"),
    (torch.tensor([[0, 1]]), ValueError, r"labels must have shape logits.shape\[:-1\] = \[2\].*got .* labels int64 \[1, 2\]"),
    (torch.tensor([0, 3]), ValueError, r"labels must lie in \[0, 3\) .*; got 3"),
    (torch.tensor([-1, 0]), ValueError, r"labels must lie in \[0, 3\) .*; got -1"),
])
def test_cross_entropy_rejects_bad_labels(labels, exc, match):
    with pytest.raises(exc, match=f"deepfn.losses.cross_entropy: {match}"):
        losses.cross_entropy(torch.randn(2, 3), labels)


def test_cross_entropy_rejects_integer_logits():
    with pytest.raises(TypeError, match="deepfn.losses.cross_entropy: logits must be floating point; got int64"):
        losses.cross_entropy(torch.ones(2, 3, dtype=torch.int64), torch.tensor([0, 1]))


@pytest.mark.parametrize("kw, match", [
    (dict(label_smoothing=1.5), r"label_smoothing must be a float in \[0, 1\]"),
    (dict(reduction="avg"), r"reduction must be one of \['mean', 'sum', 'none'\]; got 'avg'"),
])
def test_cross_entropy_rejects_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=f"deepfn.losses.cross_entropy: {match}"):
        losses.cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), **kw)


def test_cross_entropy_ignore_index_allows_its_value():
    out = losses.cross_entropy(torch.randn(3, 4), torch.tensor([-100, 2, -100]), ignore_index=-100, reduction="none")
    assert out[0] == 0 and out[2] == 0


def _distill_twin(s, t, labels, T, alpha):
    kl = F.kl_div(F.log_softmax(s / T, dim=-1), F.softmax(t / T, dim=-1), reduction="batchmean")
    if labels is None:
        return T * T * kl
    return alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, labels)


@pytest.mark.parametrize("T, alpha, with_labels", [(4.0, 0.5, True), (1.0, 0.9, True), (2.5, 0.3, False)])
def test_distillation_matches_torch_formula(T, alpha, with_labels, dtype):
    s = (2 * torch.randn(6, 5, dtype=dtype)).requires_grad_()
    t = 2 * torch.randn(6, 5, dtype=dtype)
    labels = torch.randint(0, 5, (6,)) if with_labels else None
    ours = losses.distillation(s, t, labels, temperature=T, alpha=alpha)
    ref = _distill_twin(s, t, labels, T, alpha)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours, ref, **tol)
    torch.testing.assert_close(torch.autograd.grad(ours, s)[0], torch.autograd.grad(ref, s)[0], **tol)


def test_distillation_is_zero_kl_for_equal_logits_and_finite_for_huge():
    s = torch.randn(3, 4)
    assert losses.distillation(s, s).abs().item() < 1e-6
    huge = torch.tensor([[1e4, -1e4, 0.0]])
    assert torch.isfinite(losses.distillation(huge, -huge, torch.tensor([1])))


@pytest.mark.parametrize("kw, match", [
    (dict(temperature=0.0), "temperature must be a float > 0"),
    (dict(alpha=1.5), r"alpha must be a float in \[0, 1\]"),
])
def test_distillation_rejects_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=f"deepfn.losses.distillation: {match}"):
        losses.distillation(torch.randn(2, 3), torch.randn(2, 3), **kw)


def test_distillation_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"teacher_logits must have the shape of student_logits .* teacher float32 \[2, 4\]"):
        losses.distillation(torch.randn(2, 3), torch.randn(2, 4))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_and_bce_match_torch(reduction, dtype):
    x = torch.randn(4, 3, dtype=dtype) * 5
    y = torch.rand(4, 3, dtype=dtype)
    torch.testing.assert_close(losses.mse(x, y, reduction=reduction), F.mse_loss(x, y, reduction=reduction))
    pw = torch.rand(3, dtype=dtype) + 0.5
    torch.testing.assert_close(losses.binary_cross_entropy_with_logits(x, y, pos_weight=pw, reduction=reduction),
                               F.binary_cross_entropy_with_logits(x, y, pos_weight=pw, reduction=reduction))
    huge = torch.tensor([1e4, -1e4], dtype=dtype)
    assert torch.isfinite(losses.binary_cross_entropy_with_logits(huge, torch.tensor([0.0, 1.0], dtype=dtype)))


def test_mse_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"deepfn.losses.mse: targets must have the shape of predictions \[4\]; got float32 \[4, 1\]"):
        losses.mse(torch.randn(4), torch.randn(4, 1))


def test_bce_rejects_integer_targets():
    with pytest.raises(TypeError, match="binary_cross_entropy_with_logits: targets must be floating point"):
        losses.binary_cross_entropy_with_logits(torch.randn(4), torch.ones(4, dtype=torch.int64))

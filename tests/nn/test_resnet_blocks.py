"""ConvBlock, ResidualBlock, SEBlock and SpatialAttention against small PyTorch modules."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from deepfn import interop, random, tree
from deepfn.nn import ConvBlock, ResidualBlock, SEBlock, SpatialAttention
from tests.utils import TOL, assert_trees_close


class RefConvBlock(nn.Module):
    def __init__(self, cin, cout, k, stride, padding, act, batch_norm):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, bias=not batch_norm)
        self.batch_norm = nn.BatchNorm2d(cout) if batch_norm else None
        self.act = act

    def forward(self, x):
        x = self.conv(x)
        return self.act(self.batch_norm(x) if self.batch_norm is not None else x)


class RefResidual(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        else:
            self.downsample = None

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class RefSE(nn.Module):
    def __init__(self, c, r):
        super().__init__()
        self.excitation = nn.Sequential(nn.Linear(c, c // r, bias=False), nn.ReLU(),
                                        nn.Linear(c // r, c, bias=False), nn.Sigmoid())

    def forward(self, x):
        return x * self.excitation(x.mean((2, 3)))[..., None, None]


class RefSpatial(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, k, padding=k // 2, bias=False)

    def forward(self, x):
        pooled = torch.cat([x.mean(1, keepdim=True), x.max(1, keepdim=True).values], 1)
        return x * torch.sigmoid(self.conv(pooled))


def _stats(module):
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return module.eval()


def _oracle(block, module, x, dtype, train=False):
    """Outputs, grads (params and x) and, in training, the new running stats agree."""
    module = module.to(dtype).train(train)
    params, state = interop.from_torch(block, module)
    x = x.to(dtype)

    def loss(p, xx):
        y, s = block.apply(p, state, xx, train=train)
        return (y * torch.linspace(-1, 1, y.numel(), dtype=dtype).reshape(y.shape)).sum(), (y, s)

    (g_params, g_x), (y, new_state) = torch.func.grad(loss, argnums=(0, 1), has_aux=True)(params, x)
    xr = x.clone().requires_grad_(True)
    yr = module(xr)
    (yr * torch.linspace(-1, 1, yr.numel(), dtype=dtype).reshape(yr.shape)).sum().backward()
    # fp32: gradients of size ~10 through batch statistics round at ~1e-5 absolute.
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else TOL[dtype]
    torch.testing.assert_close(y, yr, **tol)
    torch.testing.assert_close(g_x, xr.grad, **tol)
    assert_trees_close(g_params, tree.unflatten({n: p.grad for n, p in module.named_parameters()}), **tol)
    if train:
        assert tree.structure(new_state) == tree.structure(state)
        assert_trees_close(new_state, interop.from_torch(block, module)[1], **tol)
    else:  # outside grad: its aux outputs are unwrapped copies
        assert block.apply(params, state, x)[1] is state


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("cfg", [
    dict(k=3, stride=1, padding=1, act="relu", bn=True),
    dict(k=7, stride=2, padding=3, act="gelu", bn=True),
    dict(k=3, stride=2, padding=0, act="leaky_relu", bn=False),
])
def test_conv_block_oracle(cfg, train, dtype):
    torch.manual_seed(0)
    acts = {"relu": torch.relu, "gelu": nn.functional.gelu, "leaky_relu": lambda t: nn.functional.leaky_relu(t, 0.01)}
    block = ConvBlock(3, 5, cfg["k"], cfg["stride"], cfg["padding"], cfg["act"], cfg["bn"])
    module = _stats(RefConvBlock(3, 5, cfg["k"], cfg["stride"], cfg["padding"], acts[cfg["act"]], cfg["bn"]))
    _oracle(block, module, torch.randn(2, 3, 9, 9), dtype, train)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("cin, cout, stride", [(4, 4, 1), (4, 8, 2), (4, 6, 1), (3, 3, 2)])
def test_residual_block_oracle(cin, cout, stride, train, dtype):
    torch.manual_seed(1)
    block = ResidualBlock(cin, cout, stride)
    assert ("downsample" in block.init(random.key(0))[0]) == (stride != 1 or cin != cout)
    _oracle(block, _stats(RefResidual(cin, cout, stride)), torch.randn(3, cin, 7, 6), dtype, train)


@pytest.mark.parametrize("channels, reduction", [(32, 16), (12, 4), (5, 1)])
def test_se_block_oracle(channels, reduction, dtype):
    torch.manual_seed(2)
    _oracle(SEBlock(channels, reduction), RefSE(channels, reduction), torch.randn(2, channels, 4, 5), dtype)


@pytest.mark.parametrize("kernel_size", [7, 3])
def test_spatial_attention_oracle(kernel_size, dtype):
    torch.manual_seed(3)
    _oracle(SpatialAttention(kernel_size), RefSpatial(kernel_size), torch.randn(2, 6, 9, 8), dtype)


def test_conv_block_channel_dropout(getkey):
    block = ConvBlock(2, 16, 1, 1, 0, activation="identity", batch_norm=False, dropout_rate=0.5)
    params, state = block.init(getkey())
    x = torch.randn(8, 2, 4, 4)
    clean, _ = block.apply(params, state, x)
    with pytest.raises(ValueError, match=r"ConvBlock\(.*train=True needs a random key"):
        block.apply(params, state, x, train=True)
    y, _ = block.apply(params, state, x, key=getkey(), train=True)
    kept = (y != 0).flatten(2).any(-1)  # [b, c]: a channel is kept or dropped as a whole
    assert torch.equal((y == 0).flatten(2).all(-1), ~kept)
    assert 0.2 < kept.float().mean() < 0.8
    torch.testing.assert_close(y[kept], 2 * clean[kept])


@given(batch=st.integers(1, 3), cin=st.integers(1, 5), cout=st.integers(1, 5), stride=st.integers(1, 3),
       h=st.integers(1, 9), w=st.integers(1, 9))
def test_residual_block_output_shape(batch, cin, cout, stride, h, w):
    block = ResidualBlock(cin, cout, stride)
    params, state = block.init(random.key(0))
    y, _ = block.apply(params, state, torch.randn(batch, cin, h, w))
    assert y.shape == (batch, cout, -(-h // stride), -(-w // stride))


@pytest.mark.parametrize("block, x, err, match", [
    (ConvBlock(3, 4), torch.randn(3, 5, 5), ValueError, r"ConvBlock\(.*\.apply: x must be 4-d \[b, c, H, W\]; got float32 \[3, 5, 5\]"),
    (ConvBlock(3, 4), torch.randn(1, 2, 5, 5), ValueError, r"ConvBlock\(.*x must have size 3 \(in_channels\) in axis 1"),
    (ConvBlock(3, 4), torch.ones(1, 3, 5, 5, dtype=torch.int64), TypeError, r"ConvBlock\(.*x must be floating point"),
    (ResidualBlock(3, 4), torch.randn(1, 4, 5, 5), ValueError, r"ResidualBlock\(.*x must have size 3 \(in_channels\) in axis 1"),
    (ResidualBlock(3, 4), torch.randn(4, 3, 5), ValueError, r"ResidualBlock\(.*x must be 4-d"),
    (SEBlock(32), torch.randn(1, 16, 2, 2), ValueError, r"SEBlock\(.*x must have size 32 \(channels\) in axis 1"),
    (SEBlock(32), torch.randn(1, 32), ValueError, r"SEBlock\(.*x must be 4-d"),
    (SpatialAttention(), torch.randn(2, 3, 4), ValueError, r"SpatialAttention\(.*x must be 4-d"),
    (SpatialAttention(), torch.ones(2, 3, 4, 4, dtype=torch.int32), TypeError, r"SpatialAttention\(.*floating point"),
])
def test_bad_input(block, x, err, match):
    params, state = block.init(random.key(0))
    with pytest.raises(err, match=match):
        block.apply(params, state, x)


@pytest.mark.parametrize("make, match", [
    (lambda: ConvBlock(3, 4, activation="swish9"), r"ConvBlock: activation must be one of .*; got 'swish9'"),
    (lambda: ConvBlock(3, 4, dropout_rate=1.5), r"ConvBlock: dropout_rate must be a float in \[0, 1\)"),
    (lambda: ConvBlock(3, 4, kernel_size=0), r"Conv2d: kernel_size must be an int >= 1"),
    (lambda: ResidualBlock(3, 4, stride=0), r"ResidualBlock: stride must be a positive int; got 0"),
    (lambda: SEBlock(8, 16), r"SEBlock: channels // reduction must be >= 1 .*channels=8, reduction=16"),
    (lambda: SpatialAttention(4), r"SpatialAttention: kernel_size must be a positive odd int .*; got 4"),
])
def test_bad_config(make, match):
    with pytest.raises(ValueError, match=match):
        make()

"""PyTorch twins with the seed tutorial's attribute names, written for the oracle tests.

Only the attribute names (hence ``state_dict`` names) and the forward computation follow
the seed's ``MLP`` / ``ConvBlock`` / ``ResidualBlock`` / ``SEBlock`` / ``AdvancedCNN``; the
twins also take deepfn's extra options (``stem``, ``spatial_attention``) so that those can
be checked against an independent implementation.
"""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU,
               "leaky_relu": lambda: nn.LeakyReLU(0.01)}


def mlp_layers(input_dim, hidden_dims, output_dim, activation="relu", dropout_rate=0.0, batch_norm=False):
    layers: list[nn.Module] = []
    width_in = input_dim
    for width in hidden_dims:
        layers.append(nn.Linear(width_in, width))
        if batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(ACTIVATIONS[activation]())
        if dropout_rate > 0:
            layers.append(nn.Dropout(dropout_rate))
        width_in = width
    layers.append(nn.Linear(width_in, output_dim))
    return layers


class TwinMLP(nn.Module):
    def __init__(self, input_dim, hidden_dims, output_dim, activation="relu", dropout_rate=0.0, batch_norm=False):
        super().__init__()
        self.network = nn.Sequential(*mlp_layers(input_dim, hidden_dims, output_dim, activation,
                                                 dropout_rate, batch_norm))

    def forward(self, x):
        return self.network(x)


class TwinConvBlock(nn.Module):
    def __init__(self, cin, cout, kernel_size=3, stride=1, padding=1, batch_norm=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, padding, bias=not batch_norm)
        self.batch_norm = nn.BatchNorm2d(cout) if batch_norm else None

    def forward(self, x):
        x = self.conv(x)
        if self.batch_norm is not None:
            x = self.batch_norm(x)
        return torch.relu(x)


class TwinResidualBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


class TwinSE(nn.Module):
    def __init__(self, channels, reduction=16):
        super().__init__()
        hidden = channels // reduction
        self.excitation = nn.Sequential(nn.Linear(channels, hidden, bias=False), nn.ReLU(),
                                        nn.Linear(hidden, channels, bias=False), nn.Sigmoid())

    def forward(self, x):
        gate = self.excitation(x.mean(dim=(2, 3)))
        return x * gate[:, :, None, None]


class TwinSpatialAttention(nn.Module):
    def __init__(self, kernel_size=7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x):
        avg = x.mean(dim=1, keepdim=True)
        mx = x.max(dim=1, keepdim=True).values
        return x * torch.sigmoid(self.conv(torch.cat([avg, mx], dim=1)))


class TwinCNN(nn.Module):
    """The seed's ``AdvancedCNN`` layout (dropout left out: tests compare with dropout off)."""

    def __init__(self, input_channels=3, num_classes=10, base_channels=64, num_blocks=(2, 2, 2, 2),
                 use_attention=True, stem="imagenet", spatial_attention=False):
        super().__init__()
        self.stem = stem
        if stem == "imagenet":
            self.conv1 = TwinConvBlock(input_channels, base_channels, 7, 2, 3)
        else:
            self.conv1 = TwinConvBlock(input_channels, base_channels, 3, 1, 1)
        cin = base_channels
        for i, count in enumerate(num_blocks):
            cout = base_channels * 2 ** i
            blocks = [TwinResidualBlock(cin, cout, 1 if i == 0 else 2)]
            blocks += [TwinResidualBlock(cout, cout) for _ in range(count - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = cout
        self.attention = TwinSE(cin) if use_attention else None
        self.spatial_attention = TwinSpatialAttention() if spatial_attention else None
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.conv1(x)
        if self.stem == "imagenet":
            x = torch.nn.functional.max_pool2d(x, 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if self.attention is not None:
            x = self.attention(x)
        if self.spatial_attention is not None:
            x = self.spatial_attention(x)
        return self.fc(x.mean(dim=(2, 3)))

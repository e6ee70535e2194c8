"""The 3D baseline: a 3D ResNet-18-style network trained from scratch on the 3D crops (three phases as
channels, by default with their arterial excess as a fourth: :class:`hcc25d.cnn.ArterialExcess`), with the same discipline as the 2.5D models (class weighting, early stopping on training
patients, cross-fitted training predictions). Its patient probabilities are the DL_3D signature.

The network follows ResNet-18's layout (torchvision's ``r3d_18`` without its video-specific stem) — a
stem, four stages of two basic residual blocks with 3×3×3 convolutions, global average pooling and a
linear head — with a ``width`` parameter: 64 gives ResNet-18's channel widths (the ``gpu`` profile); the
CPU default uses fewer channels.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = [
    "SplitConv3d",
    "BasicBlock3d",
    "ResNet3D",
    "make_resnet3d",
]


class BasicBlock3d(nn.Module):
    """Two 3×3×3 convolutions with batch norm and a residual connection (1×1×1 projection when the
    shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm3d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv3d(cin, cout, 1, stride, bias=False), nn.BatchNorm3d(cout))

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class SplitConv3d(nn.Module):
    """A 3D convolution over ``in_channels`` computed as two: the first ``split`` channels and the rest,
    summed — the same function as one ``nn.Conv3d`` (its weights are initialised from one, split along the
    input channels). On a CPU, PyTorch's 3D convolution with more than three input channels takes a path
    about four times slower than with three (7³ stem at 48³: about 86 ms against 20 ms forward and backward
    on 2 cores), so the three phases and the arterial-excess channel are convolved apart."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
                 split: int = 3):
        super().__init__()
        full = nn.Conv3d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.split = int(split)
        self.head = nn.Conv3d(self.split, out_channels, kernel_size, stride, padding, bias=False)
        self.rest = nn.Conv3d(in_channels - self.split, out_channels, kernel_size, stride, padding, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(full.weight[:, :self.split])
            self.rest.weight.copy_(full.weight[:, self.split:])

    def forward(self, x):
        return self.head(x[:, :self.split]) + self.rest(x[:, self.split:])


class ResNet3D(nn.Module):
    """A ResNet-18-style 3D network with one output logit: ``stem`` (7³ convolution, stride 2, max
    pooling), ``layer1``–``layer4`` (two :class:`BasicBlock3d` each; widths ``width`` × 1, 2, 4, 8) and
    ``head`` (global average pooling, dropout, linear)."""

    def __init__(self, in_channels: int = 3, width: int = 64, dropout: float = 0.2):
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width]
        conv = (SplitConv3d(in_channels, w[0], 7, 2, 3) if in_channels > 3
                else nn.Conv3d(in_channels, w[0], 7, 2, 3, bias=False))
        self.stem = nn.Sequential(conv, nn.BatchNorm3d(w[0]), nn.ReLU(inplace=True), nn.MaxPool3d(3, 2, 1))
        cin = w[0]
        for i, c in enumerate(w):
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock3d(cin, c, 1 if i == 0 else 2),
                                                          BasicBlock3d(c, c, 1)))
            cin = c
        self.head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, 1))

    def forward(self, x):
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.head(x)


def make_resnet3d(width: int = 16, dropout: float = 0.2, in_channels: int = 3):
    """A factory for :func:`hcc25d.cnn.train_model`."""
    return lambda: ResNet3D(in_channels, width, dropout)

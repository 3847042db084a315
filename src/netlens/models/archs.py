"""Reference architectures: LeNet-5, a plain VGG-style net, a small ResNet, a GAP all-conv net.

Each factory takes ``num_classes`` and ``in_chans`` (and ``img_size``) and sets
``model.input_size = (C, H, W)`` so netlens knows the input the model expects. They register
through the same ``netlens_register_archs`` hook a plugin uses (this module is its own entry
point), so ``--arch lenet5`` works and checkpoints can name them.

Example:
    >>> model = resnet(num_classes=10, in_chans=1, img_size=28)
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "AllConvNet",
    "BasicBlock",
    "LeNet5",
    "ResNet",
    "VGG",
    "allconv",
    "lenet5",
    "resnet",
    "vgg",
]


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class LeNet5(nn.Module):
    """LeCun et al. (1998): two conv+pool stages (6, 16 maps) and three fully connected layers.

    Input is padded to 32×32 as in the paper when given 28×28 digits; ReLU and max-pooling
    replace the original scaled tanh and subsampling, as in most modern re-implementations.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size: int = 28) -> None:
        super().__init__()
        pad = 2 if img_size == 28 else 0
        self.conv1 = nn.Conv2d(in_chans, 6, 5, padding=pad)
        self.act1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.act2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        side = ((img_size + 2 * pad - 4) // 2 - 4) // 2
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.act3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.act4 = nn.ReLU()
        self.fc3 = nn.Linear(84, num_classes)
        self.input_size = (in_chans, img_size, img_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        x = self.act4(self.fc2(self.act3(self.fc1(self.flatten(x)))))
        return self.fc3(x)


class VGG(nn.Module):
    """A plain VGG-style net: stages of 3×3 conv-BN-ReLU followed by 2×2 max-pooling, then an MLP.

    ``widths`` gives each stage's channels and ``depth`` the convs per stage.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: int = 28,
        widths: Sequence[int] = (32, 64, 128),
        depth: int = 2,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, side = in_chans, img_size
        for w in widths:
            for _ in range(depth):
                layers.append(_conv_bn(cin, w))
                cin = w
            layers.append(nn.MaxPool2d(2))
            side //= 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(cin * side * side, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(256, num_classes),
        )
        self.input_size = (in_chans, img_size, img_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or 1×1 projection) shortcut (He et al., 2016)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + shortcut)


class ResNet(nn.Module):
    """A small ResNet: a 3×3 stem, stages ``layer1..layerN`` of BasicBlocks, GAP and a linear head.

    Every stage after the first halves the resolution; ``widths`` and ``blocks`` give each
    stage's channels and block count (CIFAR-style ResNet-14 by default).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: int = 28,
        widths: Sequence[int] = (32, 64, 128),
        blocks: Sequence[int] = (2, 2, 2),
    ) -> None:
        super().__init__()
        self.stem = _conv_bn(in_chans, widths[0])
        cin = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            stage = [
                BasicBlock(cin if j == 0 else w, w, 2 if (i > 0 and j == 0) else 1)
                for j in range(n)
            ]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            cin = w
        self.num_stages = len(widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)
        self.input_size = (in_chans, img_size, img_size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.forward_features(x))))


class AllConvNet(nn.Module):
    """An all-convolutional net whose last conv has one channel per class, then global pooling.

    The fast.ai lesson's CAM-ready head: ``classifier`` (a 1×1 conv) outputs one spatial map per
    class, ``pool`` averages each to a logit, so ``classifier``'s output *is* the class
    activation map. Stages of 3×3 conv-BN-ReLU are separated by 2×2 max-pooling;
    ``stem_stride=2`` makes the very first conv strided (a cheaper net for larger inputs).
    """

    def __init__(
        self,
        num_classes: int = 5,
        in_chans: int = 3,
        img_size: int = 64,
        widths: Sequence[int] = (16, 32, 64),
        depths: Sequence[int] = (1, 2, 3),
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_chans
        for i, (w, n) in enumerate(zip(widths, depths, strict=True)):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            for j in range(n):
                layers.append(_conv_bn(cin, w, stem_stride if i == j == 0 else 1))
                cin = w
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(cin, num_classes, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.input_size = (in_chans, img_size, img_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.pool(self.classifier(self.features(x))))


def lenet5(num_classes: int = 10, in_chans: int = 1, img_size: int = 28) -> LeNet5:
    """LeNet-5 (1998) for 28×28 or 32×32 inputs."""
    return LeNet5(num_classes, in_chans, img_size)


def vgg(num_classes: int = 10, in_chans: int = 1, img_size: int = 28, **kwargs: object) -> VGG:
    """A plain VGG-style net (3 stages × 2 conv-BN-ReLU, max-pooling, MLP head)."""
    return VGG(num_classes, in_chans, img_size, **kwargs)  # type: ignore[arg-type]


def resnet(
    num_classes: int = 10, in_chans: int = 1, img_size: int = 28, **kwargs: object
) -> ResNet:
    """A small ResNet (3 stages × 2 BasicBlocks, 32-64-128 channels)."""
    return ResNet(num_classes, in_chans, img_size, **kwargs)  # type: ignore[arg-type]


def allconv(
    num_classes: int = 5, in_chans: int = 3, img_size: int = 64, **kwargs: object
) -> AllConvNet:
    """An all-conv net ending in a per-class 1×1 conv and global average pooling (CAM-ready)."""
    return AllConvNet(num_classes, in_chans, img_size, **kwargs)  # type: ignore[arg-type]

"""Shared fixtures: small seeded models and images (no downloads, CPU only)."""

from __future__ import annotations

import os

# Before torch loads OpenMP: waiting threads sleep rather than spin, so a busy machine (CI's 2
# cores shared with other work) does not turn small ops into spin-waits. Same as the CLI.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


def run_script(path, source: str, *args: object, timeout: int = 600):  # noqa: ANN001, ANN201
    """Write ``source`` (dedented) to ``path`` and run it as its own program (its functions
    live in its ``__main__``, as a user's script's do); the finished process."""
    import subprocess
    import sys
    import textwrap

    path.write_text(textwrap.dedent(source))
    command = [sys.executable, str(path), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial statistics (timm zero-initialises some of them)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            with torch.no_grad():
                m.weight.copy_(1 + 0.3 * torch.randn(n, generator=g))
                m.bias.copy_(0.3 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(1 + 0.2 * torch.rand(n, generator=g))
    return model


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: tiny models run as fast and do not stall a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def resnet18() -> nn.Module:
    """timm resnet18 (random weights, BN randomised), eval mode, 10 classes."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    return randomize_bn(model).eval()


class TinyNet(nn.Module):
    """conv → bn → relu(inplace) → conv → relu → GAP → linear; used twice-called tests too."""

    input_size = (3, 32, 32)

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.conv2(x))
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(TinyNet()).eval()


@pytest.fixture
def image_files(tmp_path):
    """A few real image files of different kinds (RGB png, gray jpg, RGBA png, 16-bit png)."""
    import cv2

    rng = np.random.default_rng(0)
    paths = {}
    rgb = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "rgb.png"), rgb)
    paths["rgb"] = tmp_path / "rgb.png"
    cv2.imwrite(str(tmp_path / "gray.jpg"), rgb[:, :, 0])
    paths["gray"] = tmp_path / "gray.jpg"
    rgba = np.dstack([rgb, np.full((40, 50), 128, np.uint8)])
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    paths["rgba"] = tmp_path / "rgba.png"
    cv2.imwrite(str(tmp_path / "deep.png"), (rgb.astype(np.uint16) * 257))
    paths["deep"] = tmp_path / "deep.png"
    return paths


def layer_output(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """``layer``'s output for ``x`` (one forward, no grad): the reference tests compare with."""
    got = {}
    hook = model.get_submodule(layer).register_forward_hook(lambda m, i, o: got.update(o=o))
    try:
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
    return got["o"]

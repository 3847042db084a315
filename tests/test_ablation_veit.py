"""Veit et al. (2016): deleting one residual block hurts far less than deleting one plain layer.

Two small nets of the same width and depth are trained here, on generated stripe images (four
orientations, random phase and frequency, heavy noise); then each block / layer is skipped in turn
(mode ``identity``) and the accuracy drops are compared.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import netlens

WIDTH, DEPTH, SIDE = 12, 4, 12


pytestmark = pytest.mark.usefixtures("one_thread")


def stripes(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Stripes in one of four orientations (the class), random phase/frequency, noise σ=0.8."""
    yy, xx = torch.meshgrid(torch.arange(SIDE * 1.0), torch.arange(SIDE * 1.0), indexing="ij")
    dirs = torch.tensor([(1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, -1.0)])
    y = torch.randint(0, 4, (n,), generator=gen)
    phase = torch.rand(n, 1, 1, generator=gen) * 6.3
    freq = 0.8 + 0.4 * torch.rand(n, 1, 1, generator=gen)
    d = dirs[y]
    x = torch.sin(freq * (d[:, 0, None, None] * yy + d[:, 1, None, None] * xx) + phase)
    return (x + 0.8 * torch.randn(x.shape, generator=gen))[:, None], y


class Block(nn.Module):
    """A BasicBlock without downsampling: act(bn(conv(act(bn(conv(x))))) + x)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.act2 = nn.ReLU()
        self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))) + x)


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


def make_net(residual: bool) -> nn.Sequential:
    body = [Block(WIDTH) if residual else conv_bn_relu(WIDTH, WIDTH) for _ in range(DEPTH)]
    return nn.Sequential(
        conv_bn_relu(1, WIDTH), *body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(WIDTH, 4)
    )


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 3) -> nn.Module:
    torch.manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def test_residual_blocks_matter_less_than_plain_layers() -> None:
    gen = torch.Generator().manual_seed(0)
    x_train, y_train = stripes(768, gen)
    x_test, y_test = stripes(256, gen)
    drops = {}
    for residual in (True, False):
        torch.manual_seed(0)
        model = train(make_net(residual), x_train, y_train)
        result = netlens.ablate(model, (x_test, y_test), batch_size=256, resamples=200)
        assert result.baseline["value"] > 0.9  # both nets learned the task
        kinds = {r["kind"] for r in result.rows}
        assert kinds == ({"residual"} if residual else {"layer"})
        units = [r["unit"] for r in result.rows]
        assert units == [str(i) for i in range(1, DEPTH + 1)]  # the stem changes shape: skipped
        assert result.meta["skipped_units"] == ([] if residual else ["0"])
        drops[residual] = np.array([r["drop"] for r in result.rows])
    res, plain = drops[True], drops[False]
    # every plain layer is vital; most residual blocks can go with little loss
    assert plain.min() > 0.2, plain
    assert np.median(res) < 0.1, res
    assert res.mean() < 0.5 * plain.mean(), (res, plain)

"""Score-CAM's masked passes on threads with a model that keeps state in its forward, and
classic CAM on a bfloat16 model."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

import netlens


class KeepsFeatures(nn.Module):
    """``self.feat`` written and read back in the same forward, a pause between: two threads
    sharing the module read each other's."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.feat = self.stem(x)
        time.sleep(0.002)
        y = self.body(self.feat)
        return self.fc(torch.cat([y.mean((2, 3)), self.feat.mean((2, 3))], 1))


def test_score_cam_on_threads_with_a_model_that_keeps_state() -> None:
    torch.manual_seed(0)
    model = KeepsFeatures().eval()
    x = torch.randn(1, 3, 16, 16)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        want = netlens.cam(model, x, method="scorecam", layer="body", target=1, batch_size=2)
        torch.set_num_threads(4)  # four threads of masked passes, two masks each
        got = netlens.cam(model, x, method="scorecam", layer="body", target=1, batch_size=2)
    finally:
        torch.set_num_threads(before)
    np.testing.assert_allclose(got.heatmaps, want.heatmaps, atol=1e-6)


def test_classic_cam_on_a_bfloat16_model_equals_grad_cam() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()
    model[6].weight.data *= 10
    model = model.to(torch.bfloat16)
    x = torch.rand(2, 3, 24, 24)
    lens = netlens.load(model, mean=0, std=1)
    cam = lens.cam(x, method="cam", layer="3", target=2)
    grad = lens.cam(x, method="gradcam", layer="3", target=2)
    r = np.corrcoef(np.asarray(cam.heatmaps).ravel(), np.asarray(grad.heatmaps).ravel())[0, 1]
    assert r > 0.99


def test_a_batchnorm_on_batch_statistics_is_named_in_a_warning() -> None:
    import pytest

    from netlens.errors import NetlensWarning

    def net(track: bool) -> nn.Module:
        bn = nn.BatchNorm2d(4, track_running_stats=track)
        return nn.Sequential(nn.Conv2d(3, 4, 3), bn, nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()

    with pytest.warns(NetlensWarning, match="BatchNorm '1' normalises with each batch's own"):
        netlens.load(net(False), mean=0, std=1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", NetlensWarning)
        netlens.load(net(True), mean=0, std=1, input_size=8)

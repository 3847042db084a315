"""A hostile sweep of the session's own fixes: RGB+NIR models keep RGB's stats for their
overlays; features' headless rule leaves segmentation heads (a residual sum of logits, a
heatmap through a ReLU) alone; a user's mean/std of another count is refused, not averaged;
torchvision's RegNet, whose constructor reads tensor values, loads from a state_dict."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netlens
from netlens.analyzers.features import feature_layer
from netlens.errors import NetlensError


def test_an_rgb_nir_timm_model_keeps_rgbs_stats_for_its_overlay() -> None:
    timm = pytest.importorskip("timm")
    lens = netlens.load(timm.create_model("resnet18", in_chans=4, num_classes=5).eval())
    rgb = np.array([200, 100, 50], np.float32) / 255
    norm = (rgb - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    im = torch.tensor(norm).float().view(3, 1, 1).expand(3, 8, 8)
    shown = lens.transform.denormalize(torch.cat([im, torch.zeros(1, 8, 8)], 0))
    assert np.abs(shown[0, 0].astype(int) - [200, 100, 50]).max() <= 1


class _Quarter(nn.Module):
    """1/4-resolution class logits, the sum of two head convolutions."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.h1, self.h2 = nn.Conv2d(16, 5, 1), nn.Conv2d(16, 5, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = F.relu(self.c2(F.relu(self.c1(x))))
        return self.h1(f) + self.h2(f)


class _Heatmaps(nn.Module):
    """Four heatmaps through a ReLU: a prediction, not features."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 4, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.c2(torch.relu(self.c1(x))))


@pytest.mark.parametrize(
    ("model", "task"), [(_Quarter, None), (_Heatmaps, None), (_Heatmaps, "dense")]
)
def test_features_auto_leaves_a_segmentation_head_out(model, task) -> None:  # noqa: ANN001
    lens = netlens.load(model().eval(), input_size=(3, 32, 32), task=task)
    assert feature_layer(lens, torch.rand(1, 3, 32, 32)) in ("c1", "c2")


@pytest.mark.parametrize(("mean", "channels"), [((0.1, 0.2, 0.3, 0.4), 3), ((0.1, 0.2, 0.9), 1)])
def test_a_users_mean_of_another_count_is_refused(mean, channels) -> None:  # noqa: ANN001
    model = nn.Sequential(nn.Conv2d(channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(NetlensError, match=rf"mean has {len(mean)} values for a {channels}-ch"):
        netlens.load(model.eval(), input_size=(channels, 16, 16), mean=mean, std=(0.2,))


def test_a_torchvision_regnet_state_dict_loads(tmp_path) -> None:  # noqa: ANN001
    torchvision = pytest.importorskip("torchvision")
    torch.save(torchvision.models.regnet_y_400mf(num_classes=3).state_dict(), tmp_path / "r.pt")
    lens = netlens.load(tmp_path / "r.pt", arch="tv:regnet_y_400mf")
    with torch.no_grad():
        assert lens.model.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 3)

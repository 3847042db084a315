"""A target function without ``rows`` under Score-CAM (which scores masked copies of each
image) is told why its output has more rows than images and how to take ``rows``; with
``rows`` it gives the same map as the class index."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import netlens
from netlens.errors import NetlensError

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore")]


def lens() -> netlens.Lens:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(6, 4),
    ).eval()  # fmt: skip
    return netlens.load(net, input_size=16, mean=[0.5] * 3, std=[0.5] * 3)


def test_a_target_function_without_rows_is_told_about_the_copies() -> None:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))

    def per_image(out: torch.Tensor) -> torch.Tensor:
        return out[torch.arange(2), torch.tensor([3, 1])]

    with pytest.raises(NetlensError) as err:
        lens().cam(x, method="scorecam", layer="1", target=per_image)
    text = str(err.value)
    assert "masked or ablated copies of 2 image(s)" in text
    assert "def target(output, rows)" in text

    def with_rows(out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return out[torch.arange(len(out)), torch.tensor([3, 1])[rows]]

    got = lens().cam(x, method="scorecam", layer="1", target=with_rows).heatmaps
    ref = lens().cam(x, method="scorecam", layer="1", target=[3, 1]).heatmaps
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-6)

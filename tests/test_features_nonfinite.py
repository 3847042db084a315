"""``features`` ranks a channel whose activations are NaN (a negative BatchNorm running_var)
last, not first as ``torch.topk`` does, and warns; a 5-d tensor (a video batch) given as images
is refused in one line instead of reaching the model as a 6-d input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netlens
from netlens.errors import NetlensError

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore")]


def net() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()  # fmt: skip
    with torch.no_grad():
        model[1].running_var[5] = -1.0  # sqrt of a negative: NaN for channel 5
    return model


def test_a_nan_channel_ranks_last_and_is_warned() -> None:
    model = net()
    lens = netlens.load(model, input_size=16, mean=[0.5] * 3, std=[0.5] * 3)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    res = lens.features(x, layer="1", top=3)
    with torch.no_grad():
        means = model[:2](x).mean((2, 3))  # the reference: plain forward, NaN for channel 5
    assert torch.isnan(means[:, 5]).all()
    ref = torch.topk(means.nan_to_num(nan=-torch.inf), 3, dim=1).indices
    got = torch.as_tensor(res.arrays["1:channels"])
    assert torch.equal(got, ref) and 5 not in got.tolist()[0]
    assert any("1 channel(s) (5)" in w and "not finite" in w for w in res.meta["warnings"])


def test_a_5d_tensor_is_not_images() -> None:
    lens = netlens.load(net(), input_size=16, mean=[0.5] * 3, std=[0.5] * 3)
    with pytest.raises(NetlensError, match="5-d tensor .* is not images"):
        lens.features(torch.rand(1, 3, 4, 16, 16), layer="0")

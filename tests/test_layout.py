"""Models whose forward refuses channels-last tensors (a hand-written ``.view``) still run.

netlens feeds its many forward passes channels-last (faster convolutions on CPU). A classic
LeNet-style forward flattens with ``x.view(x.size(0), -1)``, which raises on a channels-last
activation; such a model must run on standard-layout inputs and give the same answers as a
twin that flattens with ``reshape`` (which takes either layout).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import netlens
from netlens.layout import run_channels_last, takes_channels_last
from netlens.metrics.deletion import Deletion

NETS = '''
import torch
from torch import nn


class ViewNet(nn.Module):
    """conv → ReLU → conv → ReLU → pool → x.view(n, -1) → linear (as in countless tutorials)."""

    flatten = "view"

    def __init__(self, num_classes: int = 3, in_chans: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(8 * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv2(torch.relu(self.conv1(x)))))
        flat = x.view(x.size(0), -1) if self.flatten == "view" else x.reshape(x.size(0), -1)
        return self.fc(flat)


class ReshapeNet(ViewNet):
    flatten = "reshape"
'''


@pytest.fixture
def nets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    path = tmp_path / "viewnets.py"
    path.write_text(textwrap.dedent(NETS))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module("viewnets")
    yield path, module
    import sys

    sys.modules.pop("viewnets", None)


def twins(module) -> tuple[nn.Module, nn.Module]:  # noqa: ANN001
    torch.manual_seed(0)
    view = module.ViewNet().eval()
    same = module.ReshapeNet().eval()
    same.load_state_dict(view.state_dict())
    return view, same


def test_the_view_net_really_refuses_channels_last(nets) -> None:  # noqa: ANN001
    view, same = twins(nets[1])
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="view"):
        view(x)
    same(x)  # the twin takes it
    assert not takes_channels_last(view, x) and takes_channels_last(same, x)


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "ablationcam"])
def test_cam_on_a_view_net_equals_its_reshape_twin(nets, method: str) -> None:  # noqa: ANN001
    view, same = twins(nets[1])
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    got = netlens.cam(view, x, method=method, layer="conv2", top=2)
    ref = netlens.cam(same, x, method=method, layer="conv2", top=2)
    assert np.array_equal(got.targets, ref.targets)
    np.testing.assert_allclose(got.heatmaps, ref.heatmaps, atol=1e-5)
    assert ref.heatmaps.std() > 0.05


def test_deletion_on_a_view_net_equals_its_reshape_twin(nets) -> None:  # noqa: ANN001
    view, same = twins(nets[1])
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    maps = np.random.default_rng(0).random((2, 16, 16))
    got = Deletion()(view, x, maps, [0, 2], steps=8, batch_size=5, workers=2)
    ref = Deletion()(same, x, maps, [0, 2], steps=8, batch_size=5, workers=2)
    np.testing.assert_allclose(got["curve"], ref["curve"], atol=1e-6)


def test_a_refusing_model_is_tried_channels_last_once(nets) -> None:  # noqa: ANN001
    view, _ = twins(nets[1])
    seen: list[bool] = []
    view.register_forward_pre_hook(
        lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last))
    )
    resets: list[int] = []
    x = torch.randn(2, 3, 8, 8)
    for _ in range(3):
        run_channels_last(view, view, x, again=lambda: resets.append(1))
    assert seen == [True, False, False, False] and resets == [1]


def test_a_model_that_fails_anyway_raises_its_own_error() -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("my own bug")

    with pytest.raises(ValueError, match="my own bug"):
        run_channels_last(Broken(), Broken(), torch.zeros(1, 3, 4, 4))


def test_training_a_view_net_from_its_file(nets, tmp_path: Path) -> None:  # noqa: ANN001
    path, _ = nets
    result = netlens.train(
        f"{path}:ViewNet",
        "shapes",
        epochs=1,
        batch_size=16,
        max_batches=2,
        img_size=16,
        out=str(tmp_path / "v.pt"),
        quiet=True,
    )
    assert result.record["history"][0]["images"] == 32
    assert netlens.load(tmp_path / "v.pt", arch=f"{path}:ViewNet").cam(
        torch.rand(1, 3, 16, 16), layer="conv2"
    ).heatmaps.shape == (1, 16, 16)

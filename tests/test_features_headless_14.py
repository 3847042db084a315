"""``features`` with the ``auto`` layer on headless backbones as users build them (timm's
``num_classes=0, global_pool=''``, torchvision's ``.features``): the stack's last map, not a
layer inside it; and figures of layers whose names differ only by ``.`` and ``_`` kept apart."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netlens


def _randomised(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _chosen(model: nn.Module) -> tuple[str, tuple, tuple]:
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    lens = netlens.load(model, input_size=64, mean=(0.5,) * 3, std=(0.5,) * 3)
    r = lens.features(x, layer="auto", top=2)
    with torch.no_grad():
        out = model(x)
    layer = r.meta["layers"][0]
    with netlens.probe(model, [layer]) as p, torch.no_grad():
        model(x)
    return layer, tuple(p[layer].output.shape), tuple(out.shape)


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_timm_headless_backbone_gives_its_last_map(name: str) -> None:
    timm = pytest.importorskip("timm")
    model = _randomised(timm.create_model(name, num_classes=0, global_pool=""))
    layer, shape, out = _chosen(model)
    assert shape == out, (layer, shape, out)


@pytest.mark.parametrize("name", ["convnext_tiny", "densenet121"])
def test_torchvision_features_stack_gives_its_last_map(name: str) -> None:
    torchvision = pytest.importorskip("torchvision")
    model = _randomised(torchvision.models.get_model(name).features)
    layer, shape, out = _chosen(model)
    assert shape == out, (layer, shape, out)


def test_layers_named_apart_only_by_dot_and_underscore_keep_two_figures() -> None:
    net = nn.Sequential()
    net.add_module("a", nn.Sequential())
    net.a.add_module("b", nn.Conv2d(3, 4, 3, padding=1))
    net.add_module("a_b", nn.Conv2d(4, 4, 3, padding=1))
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flat", nn.Flatten())
    net.add_module("fc", nn.Linear(4, 2))
    lens = netlens.load(net.eval(), input_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    r = lens.features(torch.rand(1, 3, 16, 16), layer=["a.b", "a_b"], top=2)
    assert len(r.figures()) == 2

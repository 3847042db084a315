"""Layer selectors, close-name hints, the auto CAM layer and the layer table."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netlens.errors import LayerNotFoundError
from netlens.layers import auto_layer, eval_mode, layer_table, resolve_layers


def test_exact_glob_type_and_comma(resnet18):
    assert resolve_layers(resnet18, "layer4") == ["layer4"]
    assert resolve_layers(resnet18, "layer*.0.conv?") == [
        f"layer{i}.0.conv{j}" for i in range(1, 5) for j in (1, 2)
    ]
    assert resolve_layers(resnet18, "type:Linear") == ["fc"]
    assert resolve_layers(resnet18, "type:nn.Linear, layer1") == ["fc", "layer1"]
    assert resolve_layers(resnet18, [resnet18.layer2]) == ["layer2"]


def test_unknown_names_suggest_close_ones(resnet18):
    with pytest.raises(LayerNotFoundError) as err:
        resolve_layers(resnet18, "layer4.1.cnv2")
    msg = str(err.value)
    assert "layer4.1.conv2" in msg and "\n" not in msg and "netlens layers" in msg
    with pytest.raises(LayerNotFoundError, match="Conv2d"):
        resolve_layers(resnet18, "type:Conv3d")
    with pytest.raises(LayerNotFoundError, match="not part of"):
        resolve_layers(resnet18, [nn.Linear(2, 2)])


def test_auto_layer_picks_last_spatial_block(resnet18, tiny):
    assert auto_layer(resnet18, torch.zeros(1, 3, 64, 64)) == "layer4"
    assert resolve_layers(resnet18, "auto", example=torch.zeros(1, 3, 64, 64)) == ["layer4"]
    assert auto_layer(tiny) == "act2"


def test_auto_layer_on_torchvision_alexnet():
    import torchvision

    model = torchvision.models.alexnet(num_classes=3).eval()
    assert auto_layer(model) == "features"  # the conv stack, not the 6×6 adaptive pool


def test_layer_table_and_modes_restored(tiny):
    tiny.train()
    rows = {r.name: r for r in layer_table(tiny)}
    assert tiny.training and all(m.training for m in tiny.modules())
    assert rows["conv1"].output_shape == (1, 8, 32, 32)
    assert rows["fc"].output_shape == (1, 4)
    assert rows["conv1"].params == 8 * 3 * 9 + 8
    assert rows["fc"].trainable == 16 * 4 + 4


def test_eval_mode_restores_each_flag(tiny):
    tiny.train()
    tiny.bn1.eval()
    with eval_mode(tiny):
        assert not any(m.training for m in tiny.modules())
    assert tiny.training and not tiny.bn1.training and tiny.conv1.training


def test_auto_layer_on_vit_picks_last_block():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32).eval()
    assert auto_layer(vit) == "blocks.11"  # not the patch embedding's conv

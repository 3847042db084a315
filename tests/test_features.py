"""Features analyzer: maps equal a direct conv, top-K choice, ViT tokens, errors, CLI."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

import netlens
from netlens.cli.app import app
from netlens.errors import AnalyzerError, LayerNotFoundError
from netlens.images import Preprocess
from netlens.lens import Lens


class KnownFilters(nn.Module):
    """conv (hand-set: a vertical-edge, a horizontal-edge and a blur filter) → relu → pool → fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 2)
        edge = torch.tensor([[-1.0, 0.0, 1.0]] * 3)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, :] = edge
            self.conv.weight[1, :] = edge.T
            self.conv.weight[2, :] = 1 / 27
            self.conv.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


@pytest.fixture
def known() -> Lens:
    return Lens(KnownFilters().eval(), Preprocess(size=(16, 16)))


def test_maps_equal_a_direct_conv2d(known):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    r = known.features(x, layer="conv", channels=[0, 1, 2])
    w, b = known.model.conv.weight.detach(), known.model.conv.bias.detach()
    ref = F.conv2d(x, w, b, padding=1)
    np.testing.assert_allclose(r.arrays["conv:maps"], ref.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(r.arrays["conv:channels"], [[0, 1, 2], [0, 1, 2]])
    np.testing.assert_allclose(r.arrays["conv:means"], ref.mean(dim=(2, 3)).numpy(), rtol=1e-5)


def test_top_k_picks_the_channels_with_the_largest_mean(known):
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    r = known.features(x, layer="act", top=2)
    ref = F.relu(
        F.conv2d(x, known.model.conv.weight.detach(), known.model.conv.bias.detach(), padding=1)
    )
    top = torch.topk(ref.mean(dim=(2, 3)), 2, dim=1).indices
    np.testing.assert_array_equal(r.arrays["act:channels"], top.numpy())
    for i in range(3):
        np.testing.assert_allclose(r.arrays["act:maps"][i], ref[i, top[i]].numpy(), atol=1e-6)
    assert [row["channel"] for row in r.table[:2]] == top[0].tolist()


def test_several_layers_give_one_figure_each_and_overlay(known):
    img = np.zeros((16, 16, 3), np.uint8)
    img[:, 8:] = 255
    r = known.features([img], layer="conv,act", top=3, overlay=True)
    figs = r.figures()
    assert list(figs) == ["features-conv-image0", "features-act-image0"]
    assert r.arrays["images"].shape == (1, 16, 16, 3)
    assert all(len(f.axes[0].texts) == 3 for f in figs.values())


def test_vit_tokens_are_reshaped_to_the_patch_grid():
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=3, depth=2
    ).eval()
    lens = Lens(vit, Preprocess(size=(32, 32)))
    x = torch.randn(1, 3, 32, 32)
    seen = []
    handle = vit.blocks[1].register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        vit(x)
    handle.remove()
    tokens = seen[0][:, 1:, :]  # drop the class token; 16 patches = a 4×4 grid
    ref = tokens.reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    r = lens.features(x, layer="blocks.1", channels=[0, 5, 191])
    np.testing.assert_allclose(r.arrays["blocks.1:maps"][0], ref[0, [0, 5, 191]].numpy(), atol=1e-5)
    assert r.meta["shapes"]["blocks.1"] == [1, 192, 4, 4]


def test_layers_without_spatial_extent_and_bad_input_are_refused(known):
    x = torch.zeros(1, 3, 16, 16)
    with pytest.raises(AnalyzerError, match="no spatial extent"):
        known.features(x, layer="fc")
    with pytest.raises(AnalyzerError, match="no spatial extent"):
        known.features(x, layer="pool")  # 1×1 maps
    with pytest.raises(AnalyzerError, match="out of range"):
        known.features(x, layer="conv", channels=[3])
    with pytest.raises(LayerNotFoundError):
        known.features(x, layer="conv9")
    assert all(not m._forward_hooks for m in known.model.modules())


def test_model_is_left_as_it_was(known):
    known.model.train()
    known.model.conv.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in known.model.state_dict().items()}
    known.features(torch.randn(1, 3, 16, 16), layer="conv")
    assert known.model.training and not known.model.conv.weight.requires_grad
    assert all(torch.equal(before[k], v) for k, v in known.model.state_dict().items())
    assert all(not m._forward_hooks for m in known.model.modules())


def test_cli_features_on_resnet18_and_vit(tmp_path, resnet18):
    rng = np.random.default_rng(0)
    img = tmp_path / "in.png"
    cv2.imwrite(str(img), rng.integers(0, 255, (48, 40, 3), dtype=np.uint8))
    ck = netlens.save(
        Lens(resnet18, Preprocess(size=(32, 32))), tmp_path / "r18.pt", arch="resnet18"
    )
    runner = CliRunner()
    out = tmp_path / "o"
    res = runner.invoke(
        app,
        [
            "features",
            str(ck),
            str(img),
            "--layer",
            "layer1,layer2",
            "--top",
            "8",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["layers"] == ["layer1", "layer2"] and len(doc["table"]) == 16
    assert (out / "features-layer1-in.png").exists() and (out / "features-layer2-in.png").exists()

    res = runner.invoke(app, ["features", str(ck), str(img), "--layer", "fc", "--out", str(out)])
    assert res.exit_code == 1 and "no spatial extent" in res.output

    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=3, depth=2
    )
    vk = netlens.save(
        Lens(vit, Preprocess(size=(32, 32))),
        tmp_path / "vit.pt",
        arch="vit_tiny_patch16_224",
        arch_kwargs={"img_size": 32, "patch_size": 8, "depth": 2, "num_classes": 3},
    )
    res = runner.invoke(
        app,
        [
            "features",
            str(vk),
            str(img),
            "--layer",
            "blocks.1",
            "--channels",
            "0,1,2,3",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert (out / "features-blocks_1-in.png").exists()


def test_default_layer_is_the_last_feature_map_not_the_class_maps() -> None:
    """An all-conv net ends in a 1×1 conv with one map per class, pooled into the logits: auto
    shows the feature maps before it (issue: 5 maps labelled "3: 3" were of little use)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(12, 4, 1),  # class maps
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ).eval()
    lens = Lens(net, Preprocess(size=(16, 16)))
    r = lens.features(torch.randn(1, 3, 16, 16), top=4)
    assert r.meta["layers"] == ["3"] and r.meta["shapes"]["3"][1] == 12
    named = lens.features(torch.randn(1, 3, 16, 16), layer="4", top=4)
    assert named.meta["layers"] == ["4"]  # asked for by name: the class maps it is

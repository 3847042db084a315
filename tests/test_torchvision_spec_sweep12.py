"""torchvision preprocessing found where it was missed (sweep 12): a ViT built for 384 px gets the
weights made for 384 (IMAGENET1K_SWAG_E2E_V1: resize 384, bicubic), not the default weights'
ratio and filter at 384; a torchvision backbone inside a user's wrapper gets its weights'
transforms, as a timm backbone gets its data config."""

from __future__ import annotations

import warnings

import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torch import nn

import netlens
from netlens.errors import NetlensWarning
from netlens.preprocess import preprocess_for

pytestmark = [pytest.mark.usefixtures("one_thread")]

PHOTO = skdata.chelsea()  # 300×451: not square, so resize and crop both show


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a.double() - b.double()).abs().max())


def test_a_vit_built_for_384_gets_the_weights_made_for_384(tmp_path) -> None:
    """Named (state_dict + tv:vit_b_16) and bare: IMAGENET1K_SWAG_E2E_V1's transforms, not
    IMAGENET1K_V1's resize 438 → crop 384, bilinear (max abs diff 4.41 after normalisation)."""
    import torchvision

    weights = torchvision.models.ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1
    want = weights.transforms()(Image.fromarray(PHOTO))
    model = torchvision.models.vit_b_16(image_size=384).eval()
    torch.save(model.state_dict(), tmp_path / "vit384.pt")
    named = netlens.load(tmp_path / "vit384.pt", arch="tv:vit_b_16", device="cpu")
    bare = netlens.load(model)
    del model
    for lens in (named, bare):
        assert max_diff(lens.preprocess(PHOTO)[0], want) <= 1e-5
        info = lens.preprocess_info()
        assert info["source"].startswith("torchvision ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1")
        assert info["interpolation"] == "bicubic" and info["size"] == [384, 384]
    assert "recognised as tv:vit_b_16" in bare.preprocess_info()["source"]


def test_a_vit_at_a_size_no_weights_were_made_for_keeps_the_defaults_ratio() -> None:
    """320 px: no vit_b_16 weights crop 320, so the default's ratio and filter, saying so."""
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.vit_b_16(image_size=320)
    for spec in (preprocess_for(model, "tv:vit_b_16"), preprocess_for(model)):
        assert spec.size == (320, 320) and spec.interpolation == "bilinear"
        assert spec.crop_pct == pytest.approx(224 / 256)
        assert spec.source.startswith("torchvision ViT_B_16_Weights.IMAGENET1K_V1 transforms")
        assert "no single vit_b_16 weights entry for that size" in spec.source


class Net(nn.Module):
    """The common fine-tuning wrapper: a backbone, its head removed, and a new head."""

    def __init__(self, backbone: nn.Module, feats: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feats, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def test_a_wrapper_around_a_torchvision_backbone_gets_its_weights_transforms() -> None:
    """It "recorded no preprocessing": ImageNet's stats guessed and no resize at all."""
    import torchvision

    backbone = torchvision.models.resnet18()
    backbone.fc = nn.Identity()
    with warnings.catch_warnings():
        warnings.simplefilter("error", NetlensWarning)  # nothing guessed
        lens = netlens.load(Net(backbone, 512).eval())
    want = torchvision.models.ResNet18_Weights.DEFAULT.transforms()(Image.fromarray(PHOTO))
    assert max_diff(lens.preprocess(PHOTO)[0], want) <= 1e-5
    source = lens.preprocess_info()["source"]
    assert "ResNet18_Weights.IMAGENET1K_V1" in source
    assert source.endswith("of its torchvision backbone 'backbone'")


def test_a_torchvision_network_without_its_head_is_still_recognised() -> None:
    """``fc = nn.Identity()`` (a backbone) or a head of its own layers under ``fc``."""
    import torchvision

    with torch.device("meta"):
        bare = torchvision.models.resnet18()
        bare.fc = nn.Identity()
        own = torchvision.models.resnet18()
        own.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 3))
    for model in (bare, own):
        assert preprocess_for(model).source.endswith(
            "(recognised as tv:resnet18 by its layers' shapes)"
        )


def test_a_plain_custom_cnn_keeps_the_guess() -> None:
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net = Net(cnn, 8).eval()
    with pytest.warns(NetlensWarning, match="records no preprocessing"):
        lens = netlens.load(net)
    assert lens.transform.size is None
    assert lens.preprocess_info()["source"].startswith("model records no preprocessing")

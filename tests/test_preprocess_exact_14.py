"""Preprocessing parity (sweep 14): a one-channel timm or torchvision model gets the mean/std
averaged over channels (timm's ``adapt_to_chs``), an extremely thin image is resized as timm and
torchvision resize it (no box-resize shortcut below 256 MP), ``tv:NAME@WEIGHTS`` names the
torchvision weights entry whose transforms to use, and the docs say which timm size is used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from skimage import data as skdata
from torch import nn

import netlens
from netlens.errors import ModelLoadError
from netlens.preprocess import preprocess_for

pytestmark = [pytest.mark.usefixtures("one_thread")]

DOCS = Path(__file__).resolve().parents[1] / "docs" / "preprocessing.md"
CHELSEA = skdata.chelsea()  # 300×451


def _timm_loader_reference(model: nn.Module):
    """What timm's train.py/validate.py --in-chans 1 normalise with (create_loader's
    PrefetchLoader → adapt_to_chs): the average of the pretrained mean/std."""
    import timm
    from timm.data.loader import adapt_to_chs

    dc = timm.data.resolve_data_config({"in_chans": 1}, model=model)
    return timm.data.create_transform(
        input_size=dc["input_size"],
        interpolation=dc["interpolation"],
        crop_pct=dc["crop_pct"],
        crop_mode=dc["crop_mode"],
        mean=adapt_to_chs(dc["mean"], 1),
        std=adapt_to_chs(dc["std"], 1),
    )


# -- 1. one input channel: mean/std averaged ---------------------------------------------------
def test_a_one_channel_timm_model_gets_timms_averaged_mean_and_std() -> None:
    import timm

    model = timm.create_model("resnet10t", pretrained=False, in_chans=1).eval()
    img = Image.fromarray(CHELSEA)
    lens = netlens.load(model)
    ref = _timm_loader_reference(model)(img.convert("L"))
    assert float((lens.preprocess(img)[0] - ref).abs().max()) < 1e-6
    info = lens.preprocess_info()
    assert info["mean"] == [pytest.approx(0.449, abs=1e-3)]
    assert info["std"] == [pytest.approx(0.226, abs=1e-3)]
    assert "mean/std averaged over channels" in info["source"]


def test_a_one_channel_torchvision_module_gets_the_averaged_mean_and_std() -> None:
    model = torchvision.models.resnet18(num_classes=3)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    spec = preprocess_for(model)
    assert spec.channels == 1
    assert spec.mean == (float(np.mean((0.485, 0.456, 0.406))),)
    assert spec.std == (float(np.mean((0.229, 0.224, 0.225))),)
    assert "averaged over channels" in spec.source
    assert spec.to_dict()["mean"] == [pytest.approx(0.449, abs=1e-3)]


# -- 2. extremely thin images: the reference's own resize --------------------------------------
def test_a_thin_image_is_resized_as_timm_and_torchvision_resize_it() -> None:
    import timm

    tall = Image.fromarray(CHELSEA).resize((20, 7000))  # 224 × 78400 after timm's resize
    model = timm.create_model("resnet10t", pretrained=False).eval()
    ref = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))(tall)
    assert float((preprocess_for(model)(tall) - ref).abs().max()) < 1e-6
    wide = Image.fromarray(CHELSEA).resize((3000, 6))  # 116000 × 232 after the resize
    spec = preprocess_for(nn.Conv2d(3, 4, 3), "tv:resnet50")
    ref = torchvision.models.get_weight("ResNet50_Weights.IMAGENET1K_V2").transforms()(wide)
    assert float((spec(wide) - ref).abs().max()) < 1e-6


# -- 3. tv:NAME@WEIGHTS ------------------------------------------------------------------------
def test_tv_name_at_weights_uses_that_entrys_transforms(tmp_path) -> None:
    img = Image.fromarray(CHELSEA)
    v1 = torchvision.models.get_weight("ResNet50_Weights.IMAGENET1K_V1").transforms()
    spec = preprocess_for(nn.Conv2d(3, 4, 3), "tv:resnet50@IMAGENET1K_V1")
    assert float((spec(img) - v1(img)).abs().max()) < 1e-6
    assert spec.source.startswith("torchvision ResNet50_Weights.IMAGENET1K_V1 transforms")
    model = torchvision.models.efficientnet_b1(num_classes=4).eval()
    torch.save(model.state_dict(), tmp_path / "b1.pt")
    lens = netlens.load(tmp_path / "b1.pt", arch="tv:efficientnet_b1@IMAGENET1K_V1")
    ref = torchvision.models.get_weight("EfficientNet_B1_Weights.IMAGENET1K_V1").transforms()
    assert float((lens.preprocess(img)[0] - ref(img)).abs().max()) < 1e-6
    assert isinstance(lens.model, torchvision.models.EfficientNet)


def test_the_default_weights_source_names_the_v1_alternative() -> None:
    spec = preprocess_for(nn.Conv2d(3, 4, 3), "tv:resnet50")
    assert spec.source.startswith("torchvision ResNet50_Weights.IMAGENET1K_V2 transforms")
    assert "tv:resnet50@IMAGENET1K_V1" in spec.source and "pretrained=True" in spec.source
    one = preprocess_for(nn.Conv2d(3, 4, 3), "tv:resnet18")  # a single weights entry
    assert one.source == "torchvision ResNet18_Weights.IMAGENET1K_V1 transforms"


def test_an_unknown_weights_entry_is_one_line_listing_the_valid_ones(tmp_path) -> None:
    model = torchvision.models.resnet50(num_classes=3)
    torch.save(model.state_dict(), tmp_path / "r50.pt")
    with pytest.raises(ModelLoadError, match="IMAGENET1K_V1, IMAGENET1K_V2") as err:
        netlens.load(tmp_path / "r50.pt", arch="tv:resnet50@IMAGENET1K_V3")
    assert "\n" not in str(err.value)


# -- 2, 3, 4: the docs -------------------------------------------------------------------------
def test_the_docs_say_the_rules() -> None:
    doc = DOCS.read_text()
    assert "test_input_size" in doc and "--size 288 --crop-pct 1.0" in doc
    assert "tv:resnet50@IMAGENET1K_V1" in doc and "--crop-pct 0.875" in doc
    assert "256 MP" in doc and "one grey level" in doc
    assert "averaged" in doc


# -- 5. a fixed-size ViT given another size ----------------------------------------------------
def test_a_fixed_size_vit_given_another_size_is_told_its_own() -> None:
    import timm

    from netlens.preprocess.built_size import fixed_size_hint

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, num_classes=3).eval()
    hint = fixed_size_hint(vit, (1, 3, 160, 160))
    assert hint is not None and "3×224×224" in hint and "drop --size 160" in hint
    assert fixed_size_hint(vit, (1, 3, 224, 224)) is None
    assert fixed_size_hint(nn.Conv2d(3, 4, 3), (1, 3, 160, 160)) is None
    resnet = timm.create_model("resnet10t", pretrained=False)  # takes any size
    assert fixed_size_hint(resnet, (1, 3, 160, 160)) is None

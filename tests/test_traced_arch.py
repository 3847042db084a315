"""A torch.fx GraphModule traced from a torchvision or timm model and pickled whole gets the
preprocessing its untraced twin gets (not the generic guess), and never the other library's."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import fx, nn

import netlens
from netlens.errors import NetlensWarning
from netlens.preprocess import preprocess_for

pytestmark = [pytest.mark.usefixtures("one_thread")]

tv_models = pytest.importorskip("torchvision.models")
timm = pytest.importorskip("timm")


def _photo() -> Image.Image:
    """A real photo (skimage's cat), small: the transforms resize it either way."""
    data = pytest.importorskip("skimage.data")
    return Image.fromarray(data.chelsea()).resize((64, 48))


def _traced(model: nn.Module, *, train: bool = False) -> nn.Module:
    """``torch.save(symbolic_trace(model))`` read back: a GraphModule, its class and the
    model's attributes gone."""
    gm = fx.symbolic_trace(model.train(train))
    buf = io.BytesIO()
    torch.save(gm, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    assert type(back).__name__ == "GraphModule"
    return back


def _same_input(twin: nn.Module, traced: nn.Module) -> tuple[str, str]:
    """The two models' specs feed the photo identically; their sources."""
    a, b = preprocess_for(twin.eval()), preprocess_for(traced)
    img = _photo()
    xa, xb = a(img), b(img)
    assert xa.shape == xb.shape
    assert float((xa - xb).abs().max()) == 0.0
    return a.source, b.source


def test_traced_torchvision_resnet_gets_its_weights_transforms_not_timms():
    torch.manual_seed(0)
    model = tv_models.resnet18(num_classes=10)  # a fine-tuned head
    twin, traced = _same_input(model, _traced(model))
    assert twin.startswith("torchvision ResNet18_Weights.IMAGENET1K_V1 transforms")
    assert traced.startswith("torchvision ResNet18_Weights.IMAGENET1K_V1 transforms")
    assert "tv:resnet18" in traced and "timm" not in traced


def test_traced_timm_resnet_gets_timms_config_not_torchvisions():
    """timm's ResNet-18 has torchvision's weights, names and shapes: only its layers
    (``act1`` for ``relu``, ``global_pool``) tell them apart."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10)
    twin, traced = _same_input(model, _traced(model))
    assert twin == "timm data config of resnet18.a1_in1k"
    assert traced.startswith("timm data config of resnet18.a1_in1k (recognised as timm's resnet18")
    assert "torchvision" not in traced and "tv:" not in traced
    assert "pretrained tags preprocess differently" in traced  # a1_in1k, tv_in1k, ...


def test_traced_in_training_mode_is_recognised_too():
    torch.manual_seed(0)
    model = tv_models.mobilenet_v3_small(num_classes=5)
    _, traced = _same_input(model, _traced(model, train=True))
    assert "MobileNet_V3_Small_Weights" in traced


def test_traced_timm_model_of_its_own_naming_stays_a_guess_not_torchvision():
    """timm's mobilenetv3_small_100 is not torchvision's mobilenet_v3_small (same size, other
    names): not recognised, so the guess, which says so, not torchvision's transforms."""
    model = timm.create_model("mobilenetv3_small_100", num_classes=5)
    spec = preprocess_for(_traced(model))
    assert "(guessed)" in spec.source and "torchvision" not in spec.source


def test_loaded_traced_file_matches_untraced_file_and_warns_alike(tmp_path):
    """netlens.load of the two pickles: the same inputs, and no guess warning for either."""
    torch.manual_seed(0)
    model = tv_models.resnet18(num_classes=3).eval()
    torch.save(model, tmp_path / "plain.pt")
    torch.save(fx.symbolic_trace(model), tmp_path / "traced.pt")
    img = _photo()
    with warnings.catch_warnings():
        warnings.simplefilter("error", NetlensWarning)
        plain = netlens.load(tmp_path / "plain.pt", trust=True)
        traced = netlens.load(tmp_path / "traced.pt", trust=True)
    assert float((plain.transform(img) - traced.transform(img)).abs().max()) == 0.0
    assert tuple(traced.transform(img).shape) == (3, 224, 224)


def test_unrecognised_traced_file_warns_its_guess(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    torch.save(fx.symbolic_trace(net), tmp_path / "own.pt")
    with pytest.warns(NetlensWarning, match="records no preprocessing"):
        lens = netlens.load(tmp_path / "own.pt", trust=True)
    assert "(guessed)" in lens.transform.source


def test_arch_tv_name_applies_to_a_pickled_model(tmp_path):
    """--arch tv:NAME says which torchvision weights' transforms a pickled model gets."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=3).eval()
    torch.save(fx.symbolic_trace(model), tmp_path / "traced.pt")
    lens = netlens.load(tmp_path / "traced.pt", trust=True, arch="tv:resnet18")
    want = preprocess_for(tv_models.resnet18(num_classes=3), "tv:resnet18")
    img = _photo()
    assert lens.transform.source == want.source
    assert np.array_equal(lens.transform(img).numpy(), want(img).numpy())

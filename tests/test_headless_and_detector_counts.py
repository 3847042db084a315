"""Headless timm models (``num_classes=0``) through netlens.save / netlens.load and labelled
data, and class counts read off detectors and projection heads without running them."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torchvision
from conftest import randomize_bn
from torch import nn
from torchvision.models import detection

import netlens
from netlens.errors import DataError, NetlensError
from netlens.models import classes

pytestmark = [pytest.mark.usefixtures("one_thread")]

ARCH = "test_resnet"  # timm's tiny test network


def _timm(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(timm.create_model(ARCH, pretrained=False, **kwargs)).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_save_load_headless_timm_round_trip(tmp_path: Path, x: torch.Tensor) -> None:
    model = _timm(num_classes=0)
    path = tmp_path / "headless.pt"
    netlens.save(model, path, arch=ARCH, arch_kwargs={"num_classes": 0})
    lens = netlens.load(path)
    with torch.no_grad():
        want, got = model(x), lens.model.eval()(x)
    assert want.shape == (2, model.num_features) and got.shape == want.shape
    torch.testing.assert_close(got, want)
    # saved without arch_kwargs: the count read off the model (0) is written and loads too
    netlens.save(model, tmp_path / "plain.pt", arch=ARCH)
    with torch.no_grad():
        torch.testing.assert_close(netlens.load(tmp_path / "plain.pt").model.eval()(x), want)


def test_save_refuses_options_the_loader_refuses(tmp_path: Path) -> None:
    model = _timm(features_only=True)
    path = tmp_path / "features.pt"
    with pytest.raises(NetlensError) as err:
        netlens.save(model, path, arch=ARCH, arch_kwargs={"features_only": True})
    msg = str(err.value)
    assert "\n" not in msg and "features_only" in msg and "netlens.load would refuse" in msg
    assert "state_dict" in msg and f"--arch {ARCH}" in msg and "damaged" not in msg
    assert not path.exists()


def test_save_refuses_weights_that_do_not_fit_the_arch(tmp_path: Path) -> None:
    model = _timm(features_only=True)  # no head: the default test_resnet has one
    path = tmp_path / "features.pt"
    with pytest.raises(NetlensError) as err:
        netlens.save(model, path, arch=ARCH)
    msg = str(err.value)
    assert "\n" not in msg and "do not fit" in msg and "fc.weight" in msg and "state_dict" in msg
    assert not path.exists()
    # the advice works: the state_dict with --arch loads as the headless network
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    lens = netlens.load(tmp_path / "sd.pt", arch=ARCH)
    assert getattr(lens.model, "num_classes", None) == 0


@pytest.mark.parametrize("run", ["evaluate", "ablate"])
def test_labels_on_a_headless_model_say_it_has_no_head(run: str, x: torch.Tensor) -> None:
    lens = netlens.load(_timm(num_classes=0), input_size=32)
    data = (x, torch.tensor([0, 1]))
    call = lens.evaluate if run == "evaluate" else lambda d: lens.ablate(d, metric="accuracy")
    with pytest.raises(DataError) as err:
        call(data)
    msg = str(err.value)
    assert "\n" not in msg and "classification head" in msg and "look like features" in msg
    assert "0..-1" not in msg and "0 classes" not in msg


def test_out_of_range_labels_name_the_labels_once(x: torch.Tensor) -> None:
    lens = netlens.load(_timm(num_classes=3), input_size=32)
    with pytest.raises(DataError) as err:
        lens.evaluate((x, torch.tensor([0, 5])))
    msg = str(err.value)
    assert "labels labels" not in msg
    assert "the given labels are class indices, but 5 is out of range" in msg
    assert "model with 3 classes (0..2)" in msg


DETECTORS = [
    detection.fasterrcnn_mobilenet_v3_large_320_fpn,
    detection.ssdlite320_mobilenet_v3_large,
    detection.retinanet_resnet50_fpn,
]


@pytest.mark.parametrize("build", DETECTORS, ids=lambda f: f.__name__)
def test_detector_class_count(build, tmp_path: Path) -> None:
    kw = {"weights": None, "weights_backbone": None}
    model = build(num_classes=5, **kw).eval()
    assert classes.head_width(model) == 5
    assert "5 classes" in repr(netlens.load(model))
    fresh = build(**kw)  # the architecture's default head (91 COCO classes)
    assert classes.detector_state_classes(model.state_dict(), fresh) == 5
    assert classes.detector_state_classes(build(num_classes=3, **kw).state_dict(), fresh) == 3


def test_detector_state_dict_builds_with_its_class_count(tmp_path: Path) -> None:
    """A 3-class detector's state_dict with --arch was built with 12 classes (bbox_pred's 4
    per class) and failed with a size mismatch."""
    build = detection.fasterrcnn_mobilenet_v3_large_320_fpn
    model = build(num_classes=3, weights=None, weights_backbone=None).eval()
    torch.save(model.state_dict(), tmp_path / "det3.pt")
    lens = netlens.load(tmp_path / "det3.pt", arch="tv:fasterrcnn_mobilenet_v3_large_320_fpn")
    assert "3 classes" in repr(lens)
    got = dict(lens.model.state_dict())
    assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())


def test_projection_shared_with_a_text_tower_is_no_class_count() -> None:
    class Clip(nn.Module):  # the image and the text embedding go through one projection
        def __init__(self) -> None:
            super().__init__()
            self.visual = torchvision.models.resnet18(num_classes=16)
            self.text = nn.Embedding(10, 16)
            self.proj = nn.Linear(16, 32)
            self.register_buffer("tokens", torch.arange(3))

        def forward(self, img: torch.Tensor) -> torch.Tensor:
            i = nn.functional.normalize(self.proj(self.visual(img)), dim=-1)
            t = nn.functional.normalize(self.proj(self.text(self.tokens)), dim=-1)
            return 100 * i @ t.T

    assert classes.head_width(Clip()) is None
    assert "32 classes" not in repr(netlens.load(Clip()))
    # a plain classifier's last Linear is still its class count
    assert classes.head_width(torchvision.models.resnet18(num_classes=7)) == 7
    assert classes.detector_state_classes({}, torchvision.models.resnet18()) is None

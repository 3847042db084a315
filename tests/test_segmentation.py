"""torchvision's segmentation models as their users bring them: a state_dict with ``--arch``, or
the module itself.

Each used to go wrong: ``--arch tv:deeplabv3_mobilenet_v3_large`` tried to download the ImageNet
backbone (and failed offline), a state_dict saved with ``aux_loss=True`` (or an Inception without
its auxiliary head) did not load, ``auto`` picked the head (``classifier``: a CAM restating the
prediction; ``aux_classifier``: no gradient from ``out`` at all), the preprocessing was
classification's 224 crop, and the default target explained the background.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision
from conftest import randomize_bn
from skimage import data as photos
from torch import nn
from torchvision.models import segmentation as seg
from typer.testing import CliRunner

import netlens
from netlens.cli.app import app
from netlens.layers import auto_layer
from netlens.targets import resolve_targets

runner = CliRunner()


def deeplab(aux: bool = True, classes: int = 21, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = seg.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=classes, aux_loss=aux
    )
    return randomize_bn(model, seed).eval()


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    cv2.imwrite(str(path), cv2.cvtColor(photos.astronaut(), cv2.COLOR_RGB2BGR))
    return path


def test_auto_is_the_map_feeding_the_head_of_the_output_explained() -> None:
    x = torch.randn(1, 3, 64, 64)
    model = deeplab()
    assert auto_layer(model, x) == "backbone.16"  # not classifier, nor aux_classifier after it
    assert auto_layer(model, x, "aux") == "backbone.4"  # what aux_classifier reads
    lraspp = randomize_bn(seg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None))
    assert auto_layer(lraspp.eval(), x) == "backbone.16"
    # the head found inside a wrapper too, and a plain conv stack's last conv is its head
    wrapped = nn.Sequential(model)
    assert auto_layer(wrapped, x) == "0.backbone.16"
    fcn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    assert auto_layer(fcn, x) == "1"


def test_gradcam_matches_pytorch_grad_cams_segmentation_tutorial() -> None:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    model = deeplab(seed=1)  # (seed 0's Grad-CAM maps are all zero, in both libraries)
    lens = netlens.load(model)
    x = nn.functional.interpolate(lens.preprocess(photos.astronaut()), size=(160, 160))
    res = lens.cam(x, method="gradcam")
    assert res.meta["layers"] == ["backbone.16"]

    class Out(nn.Module):  # the tutorial's SegmentationModelOutputWrapper
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)["out"]

    with torch.no_grad():
        pred = model(x)["out"].argmax(1)[0]
    c = int(res.arrays["targets"][0, 0])
    mask = (pred == c).float().numpy()
    assert mask.sum() == int(res.meta["target_names"][0][0].split("(")[1].split()[0])
    theirs = GradCAM(Out(model), [model.backbone["16"]])(
        x, targets=[SemanticSegmentationTarget(c, mask)]
    )
    assert res.heatmaps.std() > 0.01
    assert np.corrcoef(theirs.ravel(), res.heatmaps.ravel())[0, 1] > 0.999


def test_a_state_dict_loads_with_its_aux_head_its_transforms_and_voc_names(
    tmp_path: Path, astronaut: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("netlens tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    weights = tmp_path / "deeplab.pt"
    torch.save(deeplab().state_dict(), weights)
    out = tmp_path / "out"
    args = ["cam", str(weights), str(astronaut), "--arch", "tv:deeplabv3_mobilenet_v3_large"]
    result = runner.invoke(app, [*args, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "cam.json").read_text())
    run = summary["run"]
    assert run["model"]["arch"] == "tv:deeplabv3_mobilenet_v3_large"
    assert "shorter side to 520" in run["preprocess"]["source"]
    assert summary["input_size"] == [520, 520] and summary["layers"] == ["backbone.16"]
    assert summary["task"] == "dense"
    # VOC's names: region targets by name; an empty region says why its map is empty
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "o2"), "-t", "region:person"])
    lens = netlens.load(weights, arch="tv:deeplabv3_mobilenet_v3_large")
    assert lens.classes[0] == "__background__" and lens.classes[15] == "person"
    x = lens.preprocess(str(astronaut))
    with torch.no_grad():
        person = int((lens.model(x)["out"].argmax(1) == 15).sum())
    assert result.exit_code == 0, result.output
    assert ("region for person is empty" in result.output) == (person == 0)
    assert f"person ({person} px)" in result.output


def test_the_module_itself_is_recognised_for_its_transforms() -> None:
    lens = netlens.load(deeplab(aux=False, classes=5))
    assert "recognised as tv:deeplabv3_mobilenet_v3_large" in lens.transform.source
    assert lens.transform.size == (520, 520) and lens.classes is None  # 5 classes: not VOC's


def test_pred_explains_the_main_object_not_the_background() -> None:
    lens = netlens.load(nn.Conv2d(3, 3, 1), classes=["__background__", "cat", "dog"])
    out = torch.zeros(2, 3, 4, 4)
    out[:, 0] = 1.0  # background everywhere ...
    out[0, 2, :1] = 2.0  # ... but four pixels of dog in the first image
    (target,) = resolve_targets(None, out, lens)
    assert target.classes.tolist() == [2, 0]
    assert target.masks[0].sum() == 4 and target.masks[1].all()


@pytest.mark.parametrize(
    ("arch", "build"),
    [
        ("tv:inception_v3", torchvision.models.inception_v3),
        ("tv:googlenet", torchvision.models.googlenet),
    ],
)
@pytest.mark.parametrize("aux", [False, True])
def test_training_only_heads_are_optional_in_a_state_dict(
    tmp_path: Path, arch: str, build: object, aux: bool
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build(weights=None, aux_logits=aux, init_weights=False, num_classes=7)  # type: ignore[operator]
    torch.save(model.state_dict(), tmp_path / "w.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lens = netlens.load(tmp_path / "w.pt", arch=arch)
    assert lens.model.aux_logits is aux
    mine, theirs = lens.model.state_dict(), model.state_dict()
    assert list(mine) == list(theirs)
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_a_detector_is_refused_in_one_line_that_says_so() -> None:
    from netlens.errors import NetlensError

    torch.manual_seed(0)
    detector = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=5
    ).eval()
    with pytest.raises(NetlensError, match="returned detections .* not object detectors"):
        netlens.cam(detector, torch.rand(1, 3, 96, 96))

"""Models as training code leaves them: wrapped in ``DataParallel`` or ``torch.compile``,
quantized, with a forward that is not differentiable, or returning several tensors.

Each used to run and give a wrong answer without a word (other preprocessing, all-zero maps,
a feature map explained as 64 classes) or to crash with torch's own message.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import randomize_bn
from hostile_inputs import assert_one_clean_line
from skimage import data as photos
from torch import nn
from typer.testing import CliRunner

import netlens
from netlens.cli.app import app
from netlens.errors import AnalyzerError, NetlensError
from netlens.models.wrappers import unwrap

runner = CliRunner()


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    """timm resnet18, random weights, BatchNorm randomised (timm zero-initialises some)."""
    torch.manual_seed(0)
    return randomize_bn(timm.create_model("resnet18", pretrained=False, num_classes=10)).eval()


def small() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    ).eval()


def test_unwrap_peels_parallel_and_compile_wrappers_outermost_first() -> None:
    net = small()
    assert unwrap(net) == (net, [])
    inner, peeled = unwrap(torch.compile(nn.DataParallel(net)))
    assert inner is net and peeled == ["OptimizedModule", "DataParallel"]


@pytest.mark.parametrize("wrap", ["DataParallel", "compile"])
def test_a_wrapped_timm_model_is_explained_as_the_model_itself(
    resnet: nn.Module, wrap: str
) -> None:
    """DataParallel hid the timm class (so a photo got a 300×451 warp instead of timm's
    224 crop); a compiled model failed inside timm's data config ("does not support len()")."""
    photo = photos.chelsea()
    ref = netlens.cam(resnet, photo)
    wrapped = nn.DataParallel(resnet) if wrap == "DataParallel" else torch.compile(resnet)
    got = netlens.cam(wrapped, photo)
    assert got.heatmaps.shape == ref.heatmaps.shape == (1, 224, 224)
    assert got.layer == ref.layer == "layer4"
    np.testing.assert_array_equal(got.heatmaps, ref.heatmaps)
    assert got.meta["run"]["model"]["unwrapped"] == [type(wrapped).__name__]
    assert "unwrapped" not in ref.meta["run"]["model"]
    assert isinstance(wrapped, nn.Module) and type(wrapped).__name__ != "ResNet"  # not replaced


@pytest.mark.parametrize("wrap", ["DataParallel", "compile"])
def test_netlens_load_of_a_wrapped_model_takes_the_networks_preprocessing(
    resnet: nn.Module, wrap: str, tmp_path: Path
) -> None:
    """``netlens.load(nn.DataParallel(net))`` (and a pickled one, with --trust) read the
    wrapper for preprocessing: no resize and guessed statistics instead of the network's own
    (a timm model under torch.compile crashed: "ResNet does not support len()")."""
    import torchvision

    tv = randomize_bn(torchvision.models.resnet18(num_classes=10)).eval()
    for net in (resnet, tv):
        wrapped = nn.DataParallel(net) if wrap == "DataParallel" else torch.compile(net)
        assert netlens.load(wrapped).transform == netlens.load(net).transform
    torch.save(nn.DataParallel(tv), tmp_path / "dp.pt")
    pickled = netlens.load(tmp_path / "dp.pt", trust=True)
    assert pickled.transform.size == (224, 224) and "tv:resnet18" in pickled.transform.source


def test_layer_names_read_off_the_wrapper_still_name_the_layer() -> None:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ref = netlens.cam(small(), x, layer="2")
    for wrapped, name in (
        (nn.DataParallel(small()), "module.2"),
        (torch.compile(small()), "_orig_mod.2"),
    ):
        got = netlens.cam(wrapped, x, layer=name)
        assert got.meta["layers"] == ["2"]
        np.testing.assert_array_equal(got.heatmaps, ref.heatmaps)


def test_a_pickled_dataparallel_model_runs_from_the_cli(tmp_path: Path) -> None:
    torch.save(nn.DataParallel(small()), tmp_path / "dp.pt")
    image = tmp_path / "img.png"
    import cv2

    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (24, 24, 3), np.uint8))
    out = tmp_path / "o"
    done = runner.invoke(
        app,
        ["cam", str(tmp_path / "dp.pt"), str(image), "--trust", "--layer", "2", "--out", str(out)],
    )
    assert done.exit_code == 0, done.output
    meta = json.loads((out / "cam.json").read_text())
    assert meta["run"]["model"]["unwrapped"] == ["DataParallel"]
    assert meta["run"]["layers"] == ["2"]


def test_a_dynamically_quantized_model_refuses_gradient_maps_and_takes_scorecam(
    resnet: nn.Module,
) -> None:
    """Its quantized head passes no gradient back: Grad-CAM was all zeros, without a word."""
    quant = torch.ao.quantization.quantize_dynamic(copy.deepcopy(resnet), {nn.Linear}, torch.qint8)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(AnalyzerError, match="gradient-free method") as err:
        netlens.cam(quant, x, method="gradcam")
    assert_one_clean_line(str(err.value))
    maps = netlens.cam(quant, x, method="scorecam").heatmaps
    assert maps.max() == pytest.approx(1.0) and maps.std() > 0.05


class Detached(nn.Module):
    """A forward that cuts the graph (features computed without gradient)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = small()[:4]
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)).detach())


class TwoHeads(nn.Module):
    """A used head and an unused branch (an auxiliary classifier kept for training)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = small()[:4]
        self.aux = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        self.aux(f)  # computed, never used
        return self.fc(f.mean((2, 3)))


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam", "xgradcam"])
def test_gradient_maps_are_refused_where_no_gradient_reaches_the_layer(method: str) -> None:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(AnalyzerError, match="no gradient flows .* to layer 'features.3'"):
        netlens.cam(Detached().eval(), x, method=method, layer="features.3")
    with pytest.raises(AnalyzerError, match="no gradient flows .* to layer 'aux'"):
        netlens.cam(TwoHeads().eval(), x, method=method, layer="aux")
    got = netlens.cam(TwoHeads().eval(), x, method=method, layer="features.3").heatmaps
    assert got.std() > 0.01  # the used path still works


class Reentrant(TwoHeads):
    """Its features under ``torch.utils.checkpoint(..., use_reentrant=True)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        f = checkpoint(self.features, x, use_reentrant=True)
        return self.fc(f.mean((2, 3)))


def test_reentrant_checkpointing_is_named_not_a_raw_error() -> None:
    """A layer before the checkpoint got torch's raw "incompatible with .grad()"; one inside
    it "no gradient flows", naming neither checkpointing nor a way out."""
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(NetlensError, match="checkpoint(ing)? with use_reentrant=True"):
        netlens.cam(Reentrant().eval(), x, method="gradcam", layer="features.0")
    with pytest.raises(NetlensError, match="checkpoint(ing)? with use_reentrant=True"):
        netlens.cam(Reentrant().eval(), x, method="gradcam", layer="features.3")
    assert netlens.cam(Reentrant().eval(), x, method="scorecam", layer="features.3").heatmaps.std()


def test_the_cli_refuses_a_layer_off_the_output_path_in_one_line(tmp_path: Path) -> None:
    model = tmp_path / "two.pt"
    torch.save(TwoHeads().eval(), model)
    image = tmp_path / "img.png"
    import cv2

    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (24, 24, 3), np.uint8))
    args = [
        "cam",
        str(model),
        str(image),
        "--trust",
        "--layer",
        "aux",
        "--out",
        str(tmp_path / "o"),
    ]
    done = runner.invoke(app, args)
    assert done.exit_code == 1
    assert "no gradient flows from the target back" in assert_one_clean_line(done.output)
    assert not (tmp_path / "o").exists()


def test_a_feature_pyramid_output_is_refused_not_explained_as_classes(resnet: nn.Module) -> None:
    """timm's ``features_only`` returns five maps; the first (N×64×112×112) was explained as a
    64-class segmentation."""
    torch.manual_seed(0)
    pyramid = timm.create_model("resnet18", pretrained=False, features_only=True).eval()
    with pytest.raises(NetlensError, match="hold no class scores") as err:
        netlens.cam(pyramid, photos.chelsea())
    line = assert_one_clean_line(str(err.value))
    assert "0: 1×64×112×112" in line and "--output" in line


class Outputs(nn.Module):
    """Returns the logits together with something else, as ``kind`` says."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.net = small()

    def forward(self, x: torch.Tensor) -> object:
        embedding = self.net[:6](x)
        logits = self.net[6](embedding)
        if self.kind == "aux":  # main head and an auxiliary copy (Inception, GoogLeNet)
            return logits, logits * 0.5
        if self.kind == "embedding-first":
            return embedding, logits
        return {"features": embedding, "scores": logits}


def test_outputs_of_several_tensors_take_the_main_head_or_ask_which() -> None:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ref = netlens.cam(small(), x, layer="2").heatmaps
    np.testing.assert_allclose(netlens.cam(Outputs("aux"), x, layer="net.2").heatmaps, ref)
    with pytest.raises(NetlensError, match=r"\(0: 2×16; 1: 2×5\).*--output KEY"):
        netlens.cam(Outputs("embedding-first"), x, layer="net.2")
    with pytest.raises(NetlensError, match=r"\(features: 2×16; scores: 2×5\)"):
        netlens.cam(Outputs("dict"), x, layer="net.2")
    picked = netlens.cam(netlens.Lens(Outputs("dict"), output="scores"), x, layer="net.2")
    np.testing.assert_allclose(picked.heatmaps, ref)


def test_a_model_without_its_head_is_said_to_output_features(resnet: nn.Module) -> None:
    """timm's ``num_classes=0`` and a head swapped for ``nn.Identity`` output 512 features;
    "class 82" of them was explained without a word."""
    import torchvision

    photo = photos.chelsea()
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(num_classes=10).eval()
    tv.fc = nn.Identity()
    timm_headless = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    for model, why in ((timm_headless, "num_classes=0"), (tv, "BatchNorm2d")):
        warned = netlens.cam(model, photo).meta["warnings"]
        assert "512 outputs look like features" in warned[0] and why in warned[0], warned
    named = netlens.Lens(tv, classes=[f"f{i}" for i in range(512)])  # the user says what they are
    for lens in (named, resnet):
        assert not any("features" in w for w in netlens.cam(lens, photo).meta["warnings"])


def test_a_network_with_a_softmax_appended_keeps_its_preprocessing(resnet: nn.Module) -> None:
    """``nn.Sequential(resnet, nn.Softmax(1))`` hid the timm class: a 300×451 warp with
    guessed settings instead of timm's 224 crop."""
    import dataclasses

    wrapped = nn.Sequential(resnet, nn.Softmax(dim=1))
    got, ref = netlens.Lens(wrapped).transform, netlens.Lens(resnet).transform
    assert dataclasses.replace(got, source=ref.source) == ref
    assert got.source.endswith("of the network it wraps")
    photo = photos.chelsea()
    assert torch.allclose(netlens.Lens(wrapped).predict(photo), netlens.Lens(resnet).predict(photo))
    headed = nn.Sequential(resnet, nn.Linear(10, 2))  # a new head: the input is the backbone's
    assert netlens.Lens(headed).transform.source.endswith("of its timm backbone '0'")
    imagenet = timm.create_model("resnet18", pretrained=False).eval()
    names = netlens.Lens(nn.Sequential(imagenet, nn.Softmax(dim=1))).classes
    assert names is not None and names[281] == "tabby" and names.guessed


@pytest.mark.parametrize(
    "compile_", [torch.jit.script, lambda m: torch.jit.trace(m, torch.rand(1, 3, 16, 16))]
)
def test_a_torchscript_module_object_is_refused_in_one_line(compile_) -> None:
    """Scripted: "'OrderedModuleDict' object has no attribute 'get'"; traced: "no layer with a
    spatial output" (its layers run as compiled code, which no hook sees)."""
    with pytest.raises(
        NetlensError, match="pass the nn.Module it was scripted or traced from"
    ) as err:
        netlens.cam(compile_(small()), torch.rand(1, 3, 16, 16))
    assert_one_clean_line(str(err.value))


@pytest.mark.parametrize("channels", [2, 4])
def test_a_model_of_other_than_rgb_channels_takes_tensors_and_refuses_photos(
    channels: int, tmp_path: Path
) -> None:
    """RGB + near-infrared (4) or dual-band (2) inputs: photos were fed as 3 channels and
    failed in a dry forward ("expected input to have 4 channels"); a 4-channel tensor crashed
    drawing its figure."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, in_chans=channels, num_classes=3)
    with pytest.raises(NetlensError, match=f"takes {channels}-channel inputs and an image has 3"):
        netlens.cam(model.eval(), photos.chelsea())
    result = netlens.cam(model, torch.rand(2, channels, 64, 64))
    assert result.heatmaps.shape == (2, 64, 64)
    result.save(tmp_path / "o")
    assert len(list((tmp_path / "o").glob("*_figure.png"))) == 2


def test_a_block_torch_fx_inlined_is_named_as_such() -> None:
    """A ``torch.fx.symbolic_trace``d ResNet keeps ``layer4`` as an empty container: it "did not
    run", with a hint (``layer4.1``) that did not run either."""
    import torchvision

    traced = torch.fx.symbolic_trace(torchvision.models.resnet18(num_classes=3).eval())
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(NetlensError, match="torch.fx inlined it"):
        netlens.cam(traced, x, layer="layer4")
    assert netlens.cam(traced, x, layer="layer4.1.conv2").heatmaps.shape == (1, 64, 64)
    data = (torch.rand(4, 3, 64, 64), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(AnalyzerError, match="torch.fx GraphModule, whose blocks were inlined"):
        netlens.ablate(traced, data, metric="prob")  # "all change shape" named no cause

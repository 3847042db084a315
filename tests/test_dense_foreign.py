"""Dense (segmentation) models as other people write them: in float16, ending in a sigmoid that
is then resized or cropped, one-channel with class names, squeezed to N×H×W, returning masks
and class scores together. Each used to be misread or to crash; each is checked here against
an independent reference (a hand-written sum, pytorch-grad-cam's targets, the pixels p > 0.5).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputTarget,
    SemanticSegmentationTarget,
)
from torch import nn

import netlens
from netlens.errors import NetlensError
from netlens.output_reader import ends_in_sigmoid
from netlens.targets import RegionTarget

torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=UserWarning)


def _load(model: nn.Module, **kw) -> netlens.Lens:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return netlens.load(model, mean=(0, 0, 0), std=(1, 1, 1), **kw)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


class Seg(nn.Module):
    """conv body, 1×1 head; ``after`` is applied to the head's output."""

    def __init__(self, k: int = 1, after=None, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, k, 1)
        self.after = after or (lambda z, x: z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after(self.head(self.body(x)), x)


def test_region_score_of_a_float16_output_is_summed_without_overflow() -> None:
    out = torch.full((2, 3, 64, 192), 8.4, dtype=torch.float16)
    out[1] = -8.4
    masks = torch.ones(2, 64, 192, dtype=torch.bool)
    masks[1, :, 100:] = False
    got = RegionTarget(torch.tensor([1, 2]), masks)(out)
    ref = [(out[i, c].double() * masks[i]).sum() for i, c in enumerate((1, 2))]  # by hand
    assert torch.isfinite(got).all()  # float16 summed to inf: Ablation-CAM was flat
    assert torch.allclose(got.double(), torch.stack(ref), rtol=1e-6)


def _upsampled_sigmoid(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(torch.sigmoid(z[..., ::2, ::2]), size=x.shape[-2:], mode="bilinear")


def _crop_sigmoid(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(F.pad(z, (0, 3, 0, 2)))[..., : x.shape[-2], : x.shape[-1]]


@pytest.mark.parametrize("after", [_upsampled_sigmoid, _crop_sigmoid])
@pytest.mark.parametrize("k", [1, 3])
def test_a_sigmoid_resized_or_cropped_is_still_read_as_a_sigmoid(after, k: int) -> None:
    model = Seg(k, after).eval()
    x = torch.randn(1, 3, 24, 36)
    assert ends_in_sigmoid(model, x)
    p = model(x).detach()
    lens = _load(model)
    out = lens.output(x)
    (target,) = lens.cam(x, layer="body", method="gradcam").meta["target_names"]
    if k == 1:  # foreground: the pixels p > 0.5, not every pixel
        assert torch.equal(out.argmax(1), (p[:, 0] > 0.5).long())
        assert target[0] == f"1 ({int((p > 0.5).sum())} px)"
    else:  # independent masks: the mean probability of each, not a softmax across them
        probs = lens.probabilities(out)
        assert torch.allclose(probs, p.mean(dim=(2, 3)), atol=1e-5)


def test_a_sigmoid_then_a_shift_is_not_read_as_a_sigmoid() -> None:
    model = Seg(1, lambda z, x: 2 * torch.sigmoid(z)[..., :-1, :] - 1).eval()  # values in [-1, 1]
    assert not ends_in_sigmoid(model, torch.randn(1, 3, 24, 36))


@pytest.mark.parametrize("names", [None, ["normal", "lesion"], ["no-tumor", "tumor"]])
def test_binary_segmentation_explains_the_foreground_whatever_its_names(names) -> None:
    model = Seg(1).eval()
    x = torch.randn(1, 3, 24, 36)
    z = model(x).detach()[0, 0]
    lens = _load(model, classes=names)
    r = lens.cam(x, layer="body")
    fg = names[1] if names else "1"
    assert r.meta["target_names"] == [[f"{fg} ({int((z > 0).sum())} px)"]]


def test_a_squeezed_binary_segmentation_reads_as_one_channel() -> None:
    """N×H×W logits (``.squeeze(1)``): the same map as pytorch-grad-cam's on N×1×H×W."""
    flat = Seg(1, lambda z, x: z.squeeze(1)).eval()
    x = torch.randn(2, 3, 24, 36)
    r = _load(flat).cam(x, layer="body", method="gradcam")
    assert r.meta["task"] == "dense" and r.meta["layers"] == ["body"]
    z = flat(x).detach()
    channel = Seg(1).eval()  # the same weights (same seed), N×1×H×W
    targets = [SemanticSegmentationTarget(0, (z[i] > 0).float().numpy()) for i in range(2)]
    theirs = GradCAM(channel, [channel.body])(x, targets=targets)
    for i in range(2):
        assert _corr(r.heatmaps[i], theirs[i]) > 0.999


def test_cam_method_on_a_dense_model_is_refused_in_one_line() -> None:
    lens = _load(Seg(3).eval())
    with pytest.raises(NetlensError, match="CAM explains classes") as err:
        lens.cam(torch.randn(1, 3, 24, 36), layer="body", method="cam")
    assert "\n" not in str(err.value)


class MultiTask(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.classification_head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)
        )
        self.decoder = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(8, 8, 3, padding=1))
        self.segmentation_head = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encoder(x)
        return self.segmentation_head(self.decoder(f)), self.classification_head(f)


class Second(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[1]


def test_auto_explains_class_scores_at_the_layer_they_depend_on() -> None:
    model = MultiTask().eval()
    x = torch.randn(1, 3, 24, 36)
    lens = _load(model, output=1)
    r = lens.cam(x, method="gradcam")
    assert r.meta["layers"] == ["encoder"]  # not segmentation_head: no gradient from class scores
    c = int(r.arrays["targets"][0, 0])
    theirs = GradCAM(Second(model), [model.encoder])(x, targets=[ClassifierOutputTarget(c)])
    assert _corr(r.heatmaps[0], theirs[0]) > 0.999
    assert lens.cam(x, method="eigencam").meta["layers"] == ["encoder"]


@pytest.mark.parametrize("method", ["scorecam", "eigencam"])
def test_an_empty_region_has_an_empty_map(method: str) -> None:
    model = Seg(3).eval()
    with torch.no_grad():  # class 2 predicted nowhere
        model.head.bias.copy_(torch.tensor([5.0, 5.0, -50.0]))
    lens = _load(model, classes=["a", "b", "c"])
    x = torch.randn(1, 3, 24, 36)
    r = lens.cam(x, method=method, layer="body", target="region:c")
    assert r.meta["target_names"] == [["c (0 px)"]]
    assert float(np.abs(r.heatmaps).max()) == 0.0  # as the warning says
    assert any("is empty" in w for w in r.meta["warnings"])
    full = lens.cam(x, method=method, layer="body", target="region:a")
    assert float(full.heatmaps.max()) > 0  # a region with pixels is still drawn


def test_evaluate_pointing_and_energy_on_a_dense_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 1)).eval()
    names = ["circle", "cross", "square", "star", "triangle"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lens = netlens.load(model, classes=names, input_size=(3, 48, 48))
    r = lens.evaluate("shapes", methods="gradcam", metrics="pointing,energy", limit=2)
    assert {row["metric"] for row in r.table} == {"pointing", "energy"}
    with pytest.raises(NetlensError, match="deletion follows a class's probability"):
        lens.evaluate("shapes", methods="gradcam", metrics="pointing,deletion", limit=2)


def test_tokens_are_not_read_as_a_segmentation() -> None:
    """An N×L×D output (a backbone's tokens) is not N×H×W masks: it would be explained as a
    binary segmentation of a 64×16 "image"; one line says so."""
    import netlens
    from netlens.errors import NetlensError

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 16, 8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.embed(x).flatten(2).transpose(1, 2)

    with pytest.raises(NetlensError, match="not maps of the image"):
        netlens.cam(Tokens().eval(), torch.rand(1, 3, 64, 64))


def test_task_binary_names_the_shape_the_model_gives() -> None:
    import netlens
    from netlens.errors import NetlensError

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 1)).eval()
    lens = netlens.load(model, input_size=(32, 48), mean=(0.5,) * 3, std=(0.5,) * 3)
    lens.task = "binary"
    with pytest.raises(NetlensError, match="this one gives 1×1×32×48"):
        lens.cam(torch.rand(1, 3, 32, 48))

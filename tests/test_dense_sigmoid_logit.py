"""A model ending in a sigmoid is explained on the sigmoid's own input z, not on σ⁻¹(p): where
p saturates (exactly 1 in float32, DBNet's text pixels) the sigmoid passes no gradient and σ⁻¹
clamps z. Each map is checked against the same network without its sigmoid; ``auto`` in a flat
graph (no containers) skips the logit map feeding the final sigmoid."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import HiResCAM, LayerCAM
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget
from torch import nn

import netlens
from netlens.errors import NetlensWarning

pytestmark = [pytest.mark.usefixtures("one_thread")]


def _load(model: nn.Module, **kw) -> netlens.Lens:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return netlens.load(model, mean=(0, 0, 0), std=(1, 1, 1), **kw)


def _corr(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


class Seg(nn.Module):
    """body → 1×1 logit (scaled so σ saturates) → sigmoid (module, function, or none)."""

    def __init__(self, sigmoid: str = "module", k: int = 1, scale: float = 400.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.feat = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, k, 1)
        with torch.no_grad():
            self.head.weight.mul_(scale)
            self.head.bias.fill_(scale * 0.1)
        self.sigmoid = sigmoid
        self.act = nn.Sigmoid()

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feat(self.body(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.logit(x)
        if self.sigmoid == "module":
            return self.act(z)
        if self.sigmoid == "function":
            return torch.sigmoid(z)
        if self.sigmoid == "resized":  # not the sigmoid's output: read back as σ⁻¹(p)
            return F.interpolate(torch.sigmoid(z[..., ::2, ::2]), size=x.shape[-2:])
        return z


class Logit(nn.Module):
    def __init__(self, m: Seg) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m.logit(x)


def _x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(1, 3, 32, 48)


def _saturated(model: Seg, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        z, p = model.logit(x), model(x)
    region = z[0, 0] > 0
    assert (p[0, 0][region] == 1).float().mean() > 0.5  # most of the region saturates
    return region


@pytest.mark.parametrize("sigmoid", ["module", "function"])
@pytest.mark.parametrize(("method", "ref"), [("layercam", LayerCAM), ("hirescam", HiResCAM)])
def test_saturated_sigmoid_region_gradients_are_the_logits(sigmoid, method, ref) -> None:
    model = Seg(sigmoid).eval()
    x = _x()
    region = _saturated(model, x)
    lens = _load(model)
    got = np.asarray(lens.cam(x, method=method, layer="feat", target="pred").heatmaps)
    logit = Logit(model).eval()
    with ref(model=logit, target_layers=[model.feat]) as cam:
        want = cam(x, targets=[SemanticSegmentationTarget(0, region.float().numpy())])[0]
    assert _corr(got.reshape(want.shape), want) > 0.999  # was 0.2-0.4: only the region's edges
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("sigmoid", ["module", "function"])
@pytest.mark.parametrize("method", ["scorecam", "ablationcam", "gradcam"])
def test_saturated_sigmoid_maps_equal_those_of_the_logit_model(sigmoid, method) -> None:
    """Score-CAM and Ablation-CAM score z itself (σ⁻¹ clamped it at 16.6 in float32)."""
    model = Seg(sigmoid).eval()
    x = _x()
    region = _saturated(model, x)
    mask = region.numpy()
    want = _load(Logit(model).eval()).cam(x, method=method, layer="m.feat", target="pred")
    got = _load(model).cam(x, method=method, layer="feat", target="pred")
    w, g = np.asarray(want.heatmaps), np.asarray(got.heatmaps)
    assert int(mask.sum()) > 0
    assert np.allclose(g, w, atol=1e-4), _corr(g, w)


class Head(nn.Module):
    """A classifier ending in a sigmoid: one logit (binary) or several (multi-label)."""

    def __init__(self, k: int, sigmoid: bool = True) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.feat = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, k)
        with torch.no_grad():
            self.fc.weight.mul_(300.0)  # logits far beyond σ's float32 range
        self.sigmoid = sigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(self.feat(x).mean(dim=(2, 3)))
        return torch.sigmoid(z) if self.sigmoid else z


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("method", ["gradcam", "scorecam", "ablationcam"])
def test_saturated_classification_sigmoid_is_explained_on_its_logits(k, method) -> None:
    x = _x()
    sig, raw = Head(k).eval(), Head(k, sigmoid=False).eval()
    raw.load_state_dict(sig.state_dict())
    with torch.no_grad():
        p, z = sig(x), raw(x)
    assert bool(((p == 0) | (p == 1)).any())
    task = "binary" if k == 1 else "multilabel"
    target = "pos" if k == 1 else 0
    got = _load(sig).cam(x, method=method, layer="feat", target=target)
    want = _load(raw, task=task).cam(x, method=method, layer="feat", target=target)
    assert np.allclose(np.asarray(got.heatmaps), np.asarray(want.heatmaps), atol=1e-4), z


def test_a_sigmoid_resized_after_warns_when_saturated() -> None:
    model = Seg("resized").eval()
    x = _x()
    lens = _load(model)
    with pytest.warns(NetlensWarning, match="saturated"):
        lens.cam(x, method="gradcam", layer="feat", target="pred")


class Flat(nn.Module):
    """No containers: what an fx / onnx2torch graph looks like (the head is not a module)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.logit = nn.ConvTranspose2d(16, 1, 2, stride=2)
        self.sig = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.sig(self.logit(h[..., ::2, ::2]))


def test_auto_in_a_flat_graph_skips_the_logit_map_feeding_the_sigmoid() -> None:
    gm = torch.fx.symbolic_trace(Flat().eval())
    r = _load(gm).cam(_x(), method="gradcam", target="pred")
    assert r.meta["layers"][0] == "relu2"  # was "logit": the prediction restated

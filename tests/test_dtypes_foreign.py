"""Models in other precisions and scales than float32 logits of order 1: maps of a model with
tiny outputs are not flat, half-precision activations are combined without overflow, a
dynamically quantized classifier is a classifier, and a half-precision model's probabilities
are the ones the user's own forward gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import netlens
from netlens.models.classes import head_width, headless

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


class Net(nn.Module):
    def __init__(self, k: int = 5, scale: float = 1.0, gain: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU()
        )
        self.head = nn.Linear(16, k)
        self.scale = scale
        with torch.no_grad():  # activations × gain, the head ÷ gain: the same logits
            self.features[2].weight.mul_(gain)
            self.features[2].bias.mul_(gain)
            self.head.weight.div_(gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3))) * self.scale


def _x(n: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.rand(n, 3, 32, 32)
    x[:, :, 8:20, 10:24] += 1.0  # something to look at
    return x


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_tiny_outputs_give_the_same_maps(dtype: torch.dtype, method: str) -> None:
    x = _x()
    kw = {"method": method, "layer": "features.2", "target": "output:3"}
    ref = netlens.cam(Net().to(dtype).eval(), x, **kw).heatmaps
    tiny = netlens.cam(Net(scale=1e-16).to(dtype).eval(), x, **kw)
    assert tiny.heatmaps.max() == pytest.approx(1.0)
    np.testing.assert_allclose(tiny.heatmaps, ref, atol=1e-4)


def _big() -> Net:
    """Activations × 30000, logits of order 100 (gradients well inside float16's range)."""
    model = Net(gain=30000.0)
    with torch.no_grad():
        model.head.weight.mul_(300.0)
    return model


@pytest.mark.parametrize("method", ["eigencam", "gradcam++"])
def test_half_precision_activations_combined_without_overflow(method: str) -> None:
    """Activations up to a few 10⁴ (finite in float16): Eigen-CAM's projections and
    Grad-CAM++'s sums over the map exceed 65504; the float32 model's maps are the reference."""
    x, kw = _x(), {"method": method, "layer": "features.2"}
    half = _big().half().eval()
    with torch.no_grad():
        peak = float(half.features[:3](x.half()).abs().max())
    assert 1e4 < peak < 65504
    ref = netlens.cam(_big().eval(), x, **kw).heatmaps
    got = netlens.cam(half, x, **kw)
    assert np.isfinite(got.heatmaps).all() and got.heatmaps.max() == pytest.approx(1.0)
    for i in range(len(x)):
        assert _corr(got.heatmaps[i], ref[i]) > 0.99


def test_a_dynamically_quantized_classifier_is_a_classifier() -> None:
    q = torch.ao.quantization.quantize_dynamic(Net(k=7).eval(), {nn.Linear}, dtype=torch.qint8)
    assert head_width(q) == 7 and headless(q) is None
    assert "7 classes" in repr(netlens.load(q))
    res = netlens.cam(q, _x(1), method="scorecam", layer="features.2")
    assert not [w for w in res.meta["warnings"] if "features" in w]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_probabilities_are_the_users_own_forward(dtype: torch.dtype) -> None:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_(1.0, 0.3)
    model, x = model.to(dtype).eval(), torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        own = torch.softmax(model(x.to(dtype)).float(), 1).numpy()
    res = netlens.cam(model, x, method="gradcam", layer="layer4")
    got = np.array([r["prediction_probability"] for r in res.table])
    np.testing.assert_allclose(got, own.max(1), rtol=0, atol=1e-6)


def test_a_dynamically_quantized_torchvision_model_keeps_its_preprocessing() -> None:
    import torchvision

    float_model = torchvision.models.resnet18(num_classes=10).eval()
    q = torch.ao.quantization.quantize_dynamic(float_model, {nn.Linear}, dtype=torch.qint8)
    spec = netlens.load(q).transform
    assert "recognised as tv:resnet18" in str(spec.source)
    assert spec == netlens.load(float_model).transform

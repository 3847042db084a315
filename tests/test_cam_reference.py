"""CAM maps against independent implementations: captum and pytorch-grad-cam."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from torch import nn

import netlens


def _minmax(a: np.ndarray) -> np.ndarray:
    lo = a.min(axis=(-2, -1), keepdims=True)
    hi = a.max(axis=(-2, -1), keepdims=True)
    return (a - lo) / (hi - lo)


def randomized_resnet18() -> nn.Module:
    """timm resnet18 with random BN statistics (timm zero-inits the last BN of each branch)."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 0.4 - 0.2)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def test_gradcam_equals_captum_layergradcam_on_timm_resnet18() -> None:
    from captum.attr import LayerAttribution, LayerGradCam

    model = randomized_resnet18()
    x = torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    targets = [3, 7, 0]  # per-image targets
    ours = netlens.cam(model, x, method="gradcam", target=targets)
    assert ours.layer == "layer4"
    attr = LayerGradCam(model, model.layer4).attribute(x, target=targets, relu_attributions=True)
    ref = LayerAttribution.interpolate(attr, (128, 128), interpolate_mode="bilinear")
    ref = _minmax(ref[:, 0].detach().numpy())
    assert ref.std() > 0.1  # not degenerate
    np.testing.assert_allclose(ours.heatmaps, ref, atol=1e-5)


def tiny_cnn() -> nn.Module:
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    ).eval()
    with torch.no_grad():  # gradients well above pytorch-grad-cam's eps (1e-6 on g²)
        net[6].weight.mul_(300.0)
    return net


@pytest.mark.parametrize(
    "ours,theirs",
    [
        ("gradcam", "GradCAM"),
        ("gradcam++", "GradCAMPlusPlus"),
        ("xgradcam", "XGradCAM"),
        ("layercam", "LayerCAM"),
        ("hirescam", "HiResCAM"),
    ],
)
def test_methods_match_pytorch_grad_cam(ours: str, theirs: str) -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = tiny_cnn()
    x = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(4))
    targets = [1, 4]
    mine = netlens.cam(model, x, method=ours, layer="3", target=targets).heatmaps
    with getattr(pgc, theirs)(model=model, target_layers=[model[3]]) as explainer:
        if hasattr(explainer, "batch_size"):
            explainer.batch_size = 8
        ref = explainer(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    assert ref.std() > 0.05
    np.testing.assert_allclose(mine, _minmax(ref), atol=2e-4)


def test_scorecam_matches_pytorch_grad_cam_at_input_resolution() -> None:
    # pytorch-grad-cam upsamples masks with align_corners=True, torchcam does not normalise them;
    # at a layer with the input's resolution no upsampling happens and the paper's method is
    # pytorch-grad-cam's exactly.
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = tiny_cnn()
    x = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(5))
    mine = netlens.cam(model, x, method="scorecam", layer="1", target=[2, 0], batch_size=3)
    with pgc.ScoreCAM(model=model, target_layers=[model[1]]) as explainer:
        explainer.batch_size = 3
        ref = explainer(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in [2, 0]])
    assert ref.std() > 0.05
    np.testing.assert_allclose(mine.heatmaps, _minmax(ref), atol=1e-4)

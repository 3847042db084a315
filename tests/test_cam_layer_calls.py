"""CAM with ``auto`` on models that reuse modules or activate in place.

(a) a model built here that reuses one ReLU after the stem and after the last conv, whose object
location we control; (b) torchvision resnet18 (its blocks call ``relu`` twice); (c) a LeNet-5
with in-place ReLUs; (d) torchvision densenet121 (``F.relu(features, inplace=True)``). Maps are
checked against Grad-CAM written out by hand on the tensor the head actually reads.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_bn
from torch import nn

import netlens
from netlens.errors import NetlensError


def hand_gradcam(acts: torch.Tensor, head, target: torch.Tensor, size: tuple[int, int]):  # noqa: ANN001
    """Grad-CAM on ``acts`` (N×C×h×w) through ``head`` (acts → logits), in float64."""
    a = acts.detach().double().requires_grad_(True)
    logits = head(a)
    score = logits[torch.arange(len(a)), target].sum()
    (g,) = torch.autograd.grad(score, a)
    cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1, keepdim=True))
    up = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0]
    flat = up.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo)).reshape(up.shape).detach().numpy()


# -- (a) a shared ReLU, object placed by the test ------------------------------------------
class SharedReluDetector(nn.Module):
    """Stem → act → conv → act (the same ReLU module) → GAP → linear; class 1 = "bright"."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.conv = nn.Conv2d(4, 8, 3, padding=1, stride=2)
        self.fc = nn.Linear(8, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            self.stem.weight[0] = 1 / 27  # channel 0: local brightness
            self.stem.bias[0] = 0.0
            self.conv.weight[0] = 0.0
            self.conv.weight[0, 0] = 1 / 9  # channel 0: brightness again, minus a threshold
            self.conv.bias[0] = -0.5
            self.fc.weight[1, 0] = 2.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))
        x = self.act(self.conv(x))
        return self.fc(x.mean((2, 3)))


def test_shared_relu_auto_layer_map_sits_on_the_object():
    model = SharedReluDetector().eval()
    g = torch.Generator().manual_seed(1)
    x = 0.2 * torch.rand(2, 3, 64, 64, generator=g)  # dim clutter
    boxes = [(8, 24, 36, 52), (40, 56, 6, 22)]  # (top, bottom, left, right) per image
    for i, (t, b, left, r) in enumerate(boxes):
        x[i, :, t:b, left:r] = 1.0
    res = netlens.cam(model, x, target=1)
    assert res.layer == "act@1"
    for heat, (t, b, left, r) in zip(res.heatmaps, boxes, strict=True):
        inside = heat[t:b, left:r].sum() / heat.sum()
        assert inside > 0.8
        y, xx = np.unravel_index(heat.argmax(), heat.shape)
        assert t <= y < b and left <= xx < r
    with torch.no_grad():
        acts = model.act(model.conv(model.act(model.stem(x))))
    ref = hand_gradcam(acts, lambda a: F.linear(a.mean((2, 3)), *_double(model.fc)), 1, (64, 64))
    np.testing.assert_allclose(res.heatmaps, ref, atol=1e-5)


def _double(layer: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    return layer.weight.detach().double(), layer.bias.detach().double()


def test_shared_relu_bare_name_asks_for_a_call():
    model = SharedReluDetector().eval()
    with pytest.raises(NetlensError, match=r"act@0.*act@1"):
        netlens.cam(model, torch.rand(1, 3, 32, 32), layer="act")
    first = netlens.cam(model, torch.rand(1, 3, 32, 32), layer="act@0")
    assert first.layer == "act@0" and first.heatmaps.shape == (1, 32, 32)


# -- (b) torchvision resnet18 -----------------------------------------------------------------
def test_torchvision_resnet18_auto_matches_hand_gradcam():
    import torchvision

    torch.manual_seed(0)
    model = randomize_bn(torchvision.models.resnet18(num_classes=6)).eval()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    res = netlens.cam(model, x, target=[1, 4])
    assert res.layer == "layer4"
    with torch.no_grad():
        h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        acts = model.layer4(model.layer3(model.layer2(model.layer1(h))))
    w, b = _double(model.fc)
    ref = hand_gradcam(
        acts, lambda a: F.linear(a.mean((2, 3)), w, b), torch.tensor([1, 4]), (96, 96)
    )
    assert ref.std() > 0.1
    np.testing.assert_allclose(res.heatmaps, ref, atol=1e-5)
    # the same tensor, named as the last call of the block's twice-called relu
    again = netlens.cam(model, x, target=[1, 4], layer="layer4.1.relu@-1")
    np.testing.assert_allclose(again.heatmaps, res.heatmaps, atol=1e-6)


# -- (c) LeNet-5 with in-place ReLUs -------------------------------------------------------------
class LeNet5(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool2 = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 5 * 5, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc(x.flatten(1))


def test_lenet_inplace_relu_explains_the_post_activation_tensor():
    model = LeNet5().eval()
    x = torch.zeros(2, 1, 28, 28)
    x[:, :, 4:24, 12:16] = 1.0  # a "1"
    x[1] = x[1].flip(-1) * 0.8
    res = netlens.cam(model, x, target=[3, 7])
    assert res.layer == "relu2"
    with torch.no_grad():
        pre = model.conv2(model.pool1(torch.relu(model.conv1(x))))
    assert pre.min() < 0  # the in-place ReLU has something to rewrite
    w, b = _double(model.fc)

    def head(a: torch.Tensor) -> torch.Tensor:  # what follows relu2: pool, flatten, fc
        return F.linear(F.max_pool2d(a, 2).flatten(1), w, b)

    post = hand_gradcam(torch.relu(pre), head, torch.tensor([3, 7]), (28, 28))
    np.testing.assert_allclose(res.heatmaps, post, atol=1e-5)
    wrong = hand_gradcam(pre, lambda a: head(torch.relu(a)), torch.tensor([3, 7]), (28, 28))
    assert np.abs(wrong - post).max() > 0.05  # the pre-activation map is another map


# -- (d) torchvision densenet121 -------------------------------------------------------------------
def test_densenet121_auto_explains_relu_of_features():
    import torchvision

    torch.manual_seed(4)
    model = randomize_bn(torchvision.models.densenet121(num_classes=5)).eval()
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        plain = model(x)
    res = netlens.cam(model, x, target=[0, 2])
    assert res.layer == "features:consumed"
    np.testing.assert_allclose(res.probs, torch.softmax(plain, 1).numpy(), rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        feats = model.features(x)
    assert feats.min() < 0
    w, b = _double(model.classifier)

    def head(a: torch.Tensor) -> torch.Tensor:
        return F.linear(F.adaptive_avg_pool2d(a, 1).flatten(1), w, b)

    ref = hand_gradcam(torch.relu(feats), head, torch.tensor([0, 2]), (128, 128))
    assert ref.std() > 0.1
    np.testing.assert_allclose(res.heatmaps, ref, atol=1e-5)
    pre = netlens.cam(model, x, target=[0, 2], layer="features")  # as the module returned it
    assert np.abs(pre.heatmaps - ref).max() > 0.05

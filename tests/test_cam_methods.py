"""CAM methods on models whose answer is known analytically."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import netlens
from netlens.analyzers.cam_methods import METHODS
from netlens.errors import AnalyzerError, NetlensWarning

ALL = sorted(METHODS)


class Quadrant(nn.Module):
    """Keeps the top-left quadrant of a feature map and zeroes the rest."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros_like(x)
        mask[..., : x.shape[-2] // 2, : x.shape[-1] // 2] = 1
        return x * mask


def quadrant_net() -> nn.Module:
    """conv → ReLU → quadrant mask → GAP → linear: class 0 only sees the top-left quadrant."""
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("conv", nn.Conv2d(3, 6, 3, padding=1))
    net.add_module("relu", nn.ReLU())
    net.add_module("mask", Quadrant())
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flat", nn.Flatten())
    net.add_module("fc", nn.Linear(6, 2))
    with torch.no_grad():
        net.conv.weight.uniform_(0.0, 0.2)
        net.conv.bias.fill_(0.05)
        net.fc.weight.copy_(torch.tensor([[1.0, 0.5, 2.0, 1.0, 0.3, 1.5], [-1.0] * 6]))
        net.fc.bias.zero_()
    return net.eval()


def _inside_share(heat: np.ndarray) -> float:
    h, w = heat.shape[-2:]
    return float(heat[..., : h // 2, : w // 2].sum() / max(heat.sum(), 1e-12))


@pytest.mark.parametrize("method", ALL)
def test_each_method_highlights_the_only_quadrant_the_class_sees(method: str) -> None:
    net = quadrant_net()
    x = torch.rand(2, 3, 16, 16) + 0.1
    r = netlens.cam(net, x, method=method, layer="mask", target=0, batch_size=4)
    heat = r.heatmaps
    assert heat.shape == (2, 16, 16) and heat.dtype == np.float32
    assert heat.max() == pytest.approx(1.0)
    assert heat[:, :8, :8].max(axis=(1, 2)).min() == pytest.approx(1.0)
    assert _inside_share(heat) > 0.999, method
    assert list(r.targets) == [0, 0]


@pytest.mark.parametrize("method", ["layercam", "hirescam"])
def test_elementwise_methods_see_the_mask_behind_the_layer(method: str) -> None:
    # Before the mask the activations cover the whole image, but only the quadrant has gradient.
    r = netlens.cam(
        quadrant_net(), torch.rand(1, 3, 16, 16) + 0.1, method=method, layer="relu", target=0
    )
    assert _inside_share(r.heatmaps) > 0.999


def small_cnn(all_conv: bool = False) -> nn.Module:
    torch.manual_seed(1)
    layers: list[nn.Module] = [
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1, stride=2),
        nn.ReLU(),
    ]
    if all_conv:  # fast.ai style: a 1×1 conv to the classes, then global pooling
        layers += [nn.Conv2d(12, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    else:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(12, 4)]
    return nn.Sequential(*layers).eval()


@pytest.mark.parametrize("all_conv", [False, True])
def test_cam_equals_gradcam_on_gap_linear_heads(all_conv: bool) -> None:
    net = small_cnn(all_conv)
    x = torch.randn(3, 3, 20, 20)
    cam = netlens.cam(net, x, method="cam", layer="3", target=[0, 1, 3])
    grad = netlens.cam(net, x, method="gradcam", layer="3", target=[0, 1, 3])
    assert cam.heatmaps.std() > 0.05
    np.testing.assert_allclose(cam.heatmaps, grad.heatmaps, atol=1e-5)


def test_cam_on_the_class_map_layer_of_an_all_conv_net_is_the_class_channel() -> None:
    net = small_cnn(all_conv=True)
    with torch.no_grad():
        net[4].bias[2] += 1.0  # so the class map is not all negative (ReLU would blank it)
    x = torch.randn(2, 3, 20, 20)
    r = netlens.cam(net, x, method="cam", layer="4", target=2)
    with torch.no_grad():
        raw = torch.relu(net[:5](x)[:, 2])
    ref = torch.nn.functional.interpolate(raw[:, None], size=(20, 20), mode="bilinear")[:, 0]
    ref = (ref - ref.amin((1, 2), keepdim=True)) / (
        ref.amax((1, 2), keepdim=True) - ref.amin((1, 2), keepdim=True)
    )
    np.testing.assert_allclose(r.heatmaps, ref.numpy(), atol=1e-5)


def test_cam_refuses_a_layer_that_does_not_feed_global_pooling() -> None:
    with pytest.raises(AnalyzerError, match="gradcam"):
        netlens.cam(small_cnn(), torch.randn(1, 3, 20, 20), method="cam", layer="1")


def test_per_image_targets_match_single_image_runs() -> None:
    net = small_cnn()
    x = torch.randn(3, 3, 20, 20)
    batch = netlens.cam(net, x, method="gradcam++", layer="3", target=[2, 0, 1])
    for i, t in enumerate([2, 0, 1]):
        one = netlens.cam(net, x[i : i + 1], method="gradcam++", layer="3", target=t)
        np.testing.assert_allclose(batch.heatmaps[i], one.heatmaps[0], atol=1e-6)
    assert list(batch.targets) == [2, 0, 1]


def test_top_k_gives_one_map_per_class_in_probability_order() -> None:
    net = small_cnn()
    x = torch.randn(2, 3, 20, 20)
    r = netlens.cam(net, x, method="scorecam", layer="3", top=3, batch_size=5)
    assert r.heatmaps.shape == (2, 3, 20, 20) and r.targets.shape == (2, 3)
    order = np.argsort(-r.probs, axis=1)[:, :3]
    np.testing.assert_array_equal(r.targets, order)
    second = netlens.cam(net, x, method="scorecam", layer="3", target=list(order[:, 1]))
    np.testing.assert_allclose(r.heatmaps[:, 1], second.heatmaps, atol=1e-6)


def test_default_target_is_the_prediction_and_probs_are_softmax() -> None:
    net = small_cnn()
    x = torch.randn(4, 3, 20, 20)
    r = netlens.cam(net, x, method="gradcam", layer="3")
    with torch.no_grad():
        p = torch.softmax(net(x), dim=1).numpy()
    np.testing.assert_allclose(r.probs, p, atol=1e-6)
    np.testing.assert_array_equal(r.targets, p.argmax(1))


def test_a_constant_map_stays_zero_never_nan() -> None:
    net = small_cnn()
    with torch.no_grad():
        net[2].weight.zero_()
        net[2].bias.fill_(0.3)
    for method in ALL:
        r = netlens.cam(net, torch.randn(2, 3, 20, 20), method=method, layer="3")
        assert np.isfinite(r.heatmaps).all() and (r.heatmaps == 0).all(), method


def test_several_layers_are_fused() -> None:
    net = small_cnn()
    x = torch.randn(2, 3, 20, 20)
    a = netlens.cam(net, x, method="layercam", layer="1", target=1).heatmaps
    b = netlens.cam(net, x, method="layercam", layer="3", target=1).heatmaps
    both = netlens.cam(net, x, method="layercam", layer="1,3", target=1, fuse="max")
    assert both.layer == "1,3"
    ref = np.maximum(a, b)
    lo, hi = ref.min(axis=(1, 2), keepdims=True), ref.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(both.heatmaps, (ref - lo) / (hi - lo), atol=1e-5)


class Skip(nn.Module):
    """conv1 → conv2 (the layer) → cat or add with conv1's output → GAP → linear."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.mode = mode
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(8 if mode == "cat" else 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.conv1(x))
        b = torch.relu(self.conv2(a))
        y = torch.cat([a, b], 1) if self.mode == "cat" else a + b
        return self.fc(y.mean(dim=(2, 3)))


@pytest.mark.parametrize("mode", ["cat", "add"])
def test_ablationcam_is_the_definition_also_with_skips_across_the_layer(mode: str) -> None:
    net = Skip(mode).eval()
    x = torch.randn(2, 3, 10, 10)
    r = netlens.cam(net, x, method="ablationcam", layer="conv2", target=[0, 2], batch_size=3)
    acts = {}
    h = net.conv2.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    with torch.no_grad():
        y = net(x)
    h.remove()
    a = acts["a"]
    t = torch.tensor([0, 2])
    w = torch.zeros(2, 4)
    for k in range(4):  # zero channel k for the whole batch: Ablation-CAM's definition

        def zero(m, i, o, k=k):  # noqa: ANN001, ANN202
            o = o.clone()
            o[:, k] = 0
            return o

        h = net.conv2.register_forward_hook(zero)
        with torch.no_grad():
            yk = net(x)
        h.remove()
        w[:, k] = (y[[0, 1], t] - yk[[0, 1], t]) / y[[0, 1], t].abs()
    ref = torch.relu((w[:, :, None, None] * a).sum(1)).numpy()
    lo, hi = ref.min(axis=(1, 2), keepdims=True), ref.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(r.heatmaps, (ref - lo) / (hi - lo), atol=1e-5)


def test_a_call_from_inside_inference_mode_gets_its_gradients():
    """A notebook cell or an eval function under ``torch.inference_mode()``: the gradient maps
    are those of a plain call (not "no gradient flows"), and so are evaluate's scores."""
    import torchvision

    torch.manual_seed(0)
    lens = netlens.load(torchvision.models.resnet18(num_classes=3).eval(), classes=list("abc"))
    x = torch.rand(2, 3, 64, 64)
    for method in ("gradcam", "layercam"):
        plain = lens.cam(x, method=method, target="a").heatmaps
        with torch.inference_mode():
            inside = lens.cam(x, method=method, target="a").heatmaps
        assert np.allclose(inside, plain, atol=1e-6), method
    assert not torch.is_inference_mode_enabled()


class _NormHead(nn.Module):
    """conv → LayerNorm over channels at each position → mean pool → linear: the conv's output
    feeds the norm, so d(score)/d(conv) is orthogonal to the conv's output at each position."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.norm(self.conv(x).permute(0, 2, 3, 1))  # N×H×W×C
        return self.fc(t.mean((1, 2)))


def test_hirescam_cancelled_by_a_following_layer_norm_is_drawn_empty_with_a_warning() -> None:
    """HiResCAM's Σ_c g·A is 0 at every position of a layer feeding a LayerNorm over its
    channels: what is left is rounding noise (2e-4 of its terms), which normalisation used to
    stretch to a full-range map, silently. It is now an empty map and a warning."""
    torch.manual_seed(0)
    model = _NormHead().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    acts = {}
    hook = model.conv.register_forward_hook(lambda m, i, o: acts.update(a=o))
    out = model(x)
    hook.remove()
    (g,) = torch.autograd.grad(out[torch.arange(2), out.argmax(1)].sum(), acts["a"])
    terms = (g * acts["a"]).detach()
    assert float(terms.sum(1).abs().max()) < 1e-3 * float(terms.abs().sum(1).max())
    lens = netlens.load(model, input_size=(3, 16, 16))
    with pytest.warns(NetlensWarning, match="cancels over the channels"):
        r = lens.cam(x, method="hirescam", layer="conv")
    assert float(np.abs(r.arrays["heatmaps"]).max()) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", NetlensWarning)
        r = lens.cam(x, method="hirescam", layer="norm")  # the norm's output: a real map
    assert float(r.arrays["heatmaps"].max()) == pytest.approx(1.0)

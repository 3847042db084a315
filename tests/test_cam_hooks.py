"""Every CAM method leaves the model as it found it: no hooks, same weights, grads and flags."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import netlens
from netlens.analyzers.cam_methods import METHODS
from netlens.errors import AnalyzerError, NetlensError, TargetError


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.Conv2d(6, 8, 3, padding=1, stride=2),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(8, 3),
    )


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grad": {
            n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
        },
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": [m.training for m in model.modules()],
    }


def hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(m._backward_pre_hooks)
        for m in model.modules()
    )


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert hooks(model) == 0
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k
    for k, g in before["grad"].items():
        assert (g is None and after["grad"][k] is None) or torch.equal(after["grad"][k], g), k


def prepared() -> nn.Module:
    model = net()
    model.train()  # the user left it training; netlens must not change that
    model[0].weight.requires_grad_(False)  # and froze a layer
    model[8].weight.grad = torch.ones_like(model[8].weight)  # and has a stale .grad
    return model


@pytest.mark.parametrize("method", sorted(METHODS))
def test_model_unchanged_after_every_method(method: str) -> None:
    model = prepared()
    before = snapshot(model)
    r = netlens.cam(model, torch.randn(2, 3, 12, 12), method=method, layer="4", top=2, batch_size=3)
    assert r.heatmaps.shape == (2, 2, 12, 12)
    assert_unchanged(model, before)


class Boom(nn.Module):
    """Raises on the n-th call: an error in the middle of the analysis."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.calls, self.after = 0, after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("boom")
        return x


@pytest.mark.parametrize("method", sorted(METHODS))
def test_model_unchanged_after_an_error(method: str) -> None:
    model = prepared()
    model.insert(5, Boom(after=1))  # the first forward passes, a later one fails
    before = snapshot(model)
    with pytest.raises((RuntimeError, NetlensError)):
        netlens.cam(
            model, torch.randn(2, 3, 12, 12), method=method, layer="4", batch_size=2, chunk=1
        )
    assert_unchanged(model, before)


def test_target_outside_the_classes_is_one_line() -> None:
    model = prepared()
    before = snapshot(model)
    with pytest.raises(TargetError, match=r"out of range.*3 classes \(0\.\.2\)"):
        netlens.cam(model, torch.randn(1, 3, 12, 12), target=5)
    with pytest.raises(TargetError, match="unknown class"):
        netlens.cam(model, torch.randn(1, 3, 12, 12), target="zebra")
    assert_unchanged(model, before)


def test_class_names_that_are_numbers_or_hold_commas_are_names() -> None:
    """Folders named 1, 2, 3: ``target="2"`` explained output 2 (the class named 3) without a
    word, and ``"3"`` of classes 7, 5, 3 was "out of range"; ImageNet's "goldfish, Carassius
    auratus" was split at its comma into two unknown targets."""
    from netlens.errors import NetlensWarning

    model = net().eval()
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    lens = netlens.load(model, size=12, classes=["1", "2", "3"])
    with pytest.warns(NetlensWarning, match=r"class named 2 \(output 1\), not output 2"):
        assert lens.cam(x, target="2").targets.tolist() == [1, 1]
    assert lens.cam(x, target=2).targets.tolist() == [2, 2]  # an int is an index
    lens = netlens.load(model, size=12, classes=["7", "5", "3"])
    assert lens.cam(x, target="3").targets.tolist() == [2, 2]
    names = ["tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark"]
    lens = netlens.load(model, size=12, classes=names)
    assert lens.cam(x, target="goldfish, Carassius auratus").targets.tolist() == [1, 1]
    assert lens.cam(x, target="2,0").targets.tolist() == [2, 0]  # still one per image


def test_a_targets_case_and_separators_are_free_as_a_folders_are() -> None:
    """``--target daisy`` for the model's own ``Daisy`` (a folder ``daisy/`` matched it, the
    target was refused); a name two classes share lists both, not the nearest spellings."""
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    lens = netlens.load(net().eval(), size=12, classes=["Daisy", "kiwi fruit", "T-Shirt"])
    for target, idx in (("daisy", 0), ("Kiwi_Fruit", 1), ("t shirt", 2), ("T-Shirt", 2)):
        assert lens.cam(x, target=target).targets.tolist() == [idx], target
    names = ["crane (n02012849)", "crate", "crane (n03126707)"]
    lens = netlens.load(net().eval(), size=12, classes=names)
    with pytest.raises(TargetError, match=r"it names several: crane \(n02012849\), crane \(n03"):
        lens.cam(x, target="crane")
    lens = netlens.load(net().eval(), size=12, classes=["Tshirt", "t-shirt", "dress"])
    with pytest.raises(TargetError, match="unknown class 'T_SHIRT'"):  # two fit: neither
        lens.cam(x, target="T_SHIRT")


def test_layer_without_spatial_output_is_refused() -> None:
    with pytest.raises(AnalyzerError, match="no spatial extent"):
        netlens.cam(net(), torch.randn(1, 3, 12, 12), layer="8")
    with pytest.raises(AnalyzerError, match="1×1"):
        netlens.cam(net(), torch.randn(1, 3, 12, 12), layer="5")


def test_dense_output_explains_the_predicted_region() -> None:
    features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    res = netlens.cam(features, torch.randn(1, 3, 12, 12), layer="0")
    assert res.meta["task"] == "dense" and res.heatmaps.shape == (1, 12, 12)
    assert "px" in res.meta["target_names"][0][0]  # a region: class and pixel count
    assert hooks(features) == 0


def test_unknown_method_suggests_close_names() -> None:
    with pytest.raises(NetlensError, match="gradcam"):
        netlens.cam(net(), torch.randn(1, 3, 12, 12), method="gradcma")


class DataDependent(nn.Module):
    """A forward with Python control flow on tensor values: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) if float(x.sum()) > -1e9 else -self.body(x)


@pytest.mark.parametrize("make", [net, DataDependent])
def test_inference_forward_folds_a_copy_and_falls_back_when_untraceable(make) -> None:  # noqa: ANN001
    from netlens.analyzers.cam_base import InferenceForward

    model = make().eval()
    before = snapshot(model)
    x = torch.randn(4, 3, 12, 12)
    fast = InferenceForward(model, model, min_passes=2)
    fast.prepare(4, x[:2])
    assert (fast._fast is not None) == (make is net)
    with torch.no_grad():
        np.testing.assert_allclose(fast(x).numpy(), model(x).numpy(), atol=1e-5)
    assert_unchanged(model, before)

"""The final-sigmoid tap (:mod:`netlens.sigmoid_tap`) under hostile forwards: many sigmoids run
after the output's own (an aux head's written-out SiLU, SE gates), and an in-place
``v.sigmoid_()`` on a view as the output. Each map is checked against the logit model's."""

from __future__ import annotations

import gc
import warnings
import weakref

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import netlens
from netlens.output_reader import output_rules
from netlens.sigmoid_tap import logit_of, tapped

pytestmark = [pytest.mark.usefixtures("one_thread")]


def _load(model: nn.Module, **kw) -> netlens.Lens:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return netlens.load(model, mean=(0, 0, 0), std=(1, 1, 1), **kw)


def _x(seed: int) -> torch.Tensor:
    return torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


class AuxAfter(nn.Module):
    """``{"logits_p": σ(z), "aux": ...}``, the aux head run after with 8 ``a * σ(a)``;
    ``logits=True``: z itself (the reference)."""

    def __init__(self, logits: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.fc, self.aux = nn.Linear(8, 3), nn.Linear(8, 2)
        with torch.no_grad():
            self.fc.weight.mul_(60)
            self.fc.bias.fill_(25.0)  # z ≈ 25: p exactly 1 in float32
        self.logits = logits

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.body(x).mean(dim=(2, 3))
        z = self.fc(f)
        p = z if self.logits else torch.sigmoid(z)
        a = self.aux(f)
        for _ in range(8):
            a = a * torch.sigmoid(a)
        return {"logits_p": p, "aux": a}


class Pick(nn.Module):
    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)["logits_p"]


def test_output_sigmoid_found_after_many_later_sigmoids() -> None:
    """The tap kept the last 8 calls: the output's own was dropped, p read as σ⁻¹(p)."""
    z = torch.randn(2, 3) * 40

    def forward() -> torch.Tensor:
        p = torch.sigmoid(z)
        a = torch.randn(2, 2)
        for _ in range(20):
            a = a * torch.sigmoid(a)
        return logit_of(p)

    assert tapped(forward)() is z


def test_intermediate_sigmoid_inputs_are_freed_when_their_outputs_die() -> None:
    """A no-grad masked pass keeps no gate's input once the gate's output is gone."""
    seen: list[bool] = []

    def forward() -> None:
        for _ in range(3):
            a = torch.randn(4, 16)
            ref = weakref.ref(a)
            b = a * torch.sigmoid(a)  # the sigmoid's output dies after the multiply
            del a
            gc.collect()
            seen.append(ref() is None)
            del b

    with torch.no_grad():
        tapped(forward)()
    assert all(seen), seen


@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
def test_aux_head_sigmoids_after_the_output_map_is_the_logit_models(method) -> None:
    x = _x(3)
    model, ref = AuxAfter().eval(), AuxAfter(logits=True).eval()
    with torch.no_grad():
        assert bool((model(x)["logits_p"] == 1).all())  # saturated
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _load(model, output="logits_p").cam(x, layer="body.2", method=method, target=0)
    assert not [w for w in caught if "could not read" in str(w.message)]
    want = _load(ref, output="logits_p", task="multilabel").cam(
        x, layer="body.2", method=method, target=0
    )
    g, w = np.asarray(got.heatmaps), np.asarray(want.heatmaps)
    assert g.std() > 0.01  # was all zero
    assert np.allclose(g, w, atol=1e-4)
    if method == "gradcam":  # and pytorch-grad-cam's on the logit z
        with GradCAM(model=Pick(ref), target_layers=[ref.body[2]]) as cam:
            pg = cam(x, targets=[ClassifierOutputTarget(0)])[0]
        assert np.corrcoef(g.ravel(), pg.ravel())[0, 1] > 0.999


class ViewInPlace(nn.Module):
    """6 class logits + 6 box values; the output ``v = out[:, :6]; v.sigmoid_()`` (``plain``:
    ``torch.sigmoid(out[:, :6])``; ``logits``: ``out[:, :6]``)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(8, 12)
        with torch.no_grad():
            self.fc.weight.mul_(60)
            self.fc.bias.fill_(25.0)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(self.body(x).mean(dim=(2, 3)))
        if self.mode == "plain":
            return torch.sigmoid(out[:, :6])
        if self.mode == "logits":
            return out[:, :6]
        v = out[:, :6]
        v.sigmoid_()
        return v


def test_in_place_sigmoid_on_a_view_is_recognised() -> None:
    x = _x(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sigmoid, _ = output_rules(ViewInPlace("view").eval(), x)
    assert sigmoid
    assert not [w for w in caught if "not out of a sigmoid" in str(w.message)]


@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
def test_in_place_sigmoid_on_a_view_map_is_the_plain_sigmoids(method) -> None:
    x = _x(2)
    maps = {}
    for mode in ("view", "plain", "logits"):
        kw = {"task": "multilabel"} if mode == "logits" else {}
        r = _load(ViewInPlace(mode).eval(), **kw).cam(x, layer="body.2", method=method, target=0)
        maps[mode] = np.asarray(r.heatmaps)
    assert maps["view"].std() > 0.01  # was flat (std 0)
    assert np.allclose(maps["view"], maps["plain"], atol=1e-4)
    assert np.allclose(maps["view"], maps["logits"], atol=1e-4)

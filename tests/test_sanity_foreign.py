"""sanity on models from elsewhere: flat trained-model maps (a tiny torchvision ViT, an empty
segmentation region) give no verdict; the cascade order is where the forward *starts* using a
module's parameters (torchvision ViT's ``encoder.pos_embedding``), checked against an
independent pre-hook reference; BatchNorm(affine=False) statistics are re-initialised; the
verdict and the layer explained are in the notebook display and the record."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import netlens
from netlens.analyzers.cam_base import CamContext, CamMethod
from netlens.metrics.randomization import (
    ROOT_STEP,
    Randomization,
    _owner,
    cascade_blocks,
    model_copy,
    randomize_modules,
)
from netlens.plugins import hookimpl
from netlens.plugins.manager import PluginHost

torchvision = pytest.importorskip("torchvision")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=5,
    ).eval()  # fmt: skip


def uint8_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8)


def reference_order(model: nn.Module, x: torch.Tensor, steps: list) -> list[str]:
    """Independent reference: steps (top first) ordered by the first forward *pre*-hook of any
    of their modules, latest first; steps the forward never reaches first."""
    first: dict[str, int] = {}
    handles = []
    for name, mod in model.named_modules():

        def pre(_m: nn.Module, _a: tuple, name: str = name) -> None:
            first.setdefault(name, len(first))

        handles.append(mod.register_forward_pre_hook(pre))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    never = 10**9
    key = {g: min(first.get(_owner(n), never) for n in m) for g, m in steps if g != ROOT_STEP}
    reached = sorted((g for g in key if key[g] < never), key=key.__getitem__, reverse=True)
    return [g for g in key if key[g] == never] + reached


# -- 1. flat trained-model maps --------------------------------------------------------------
def test_flat_trained_maps_are_inconclusive_not_passes() -> None:
    """A tiny random ViT's Grad-CAM maps are all zero: Spearman against them is 0 by
    convention, which said "passes" although there was nothing to compare."""
    lens = netlens.load(tiny_vit(), input_size=32)
    res = lens.run("sanity", uint8_images(2), method="gradcam")
    assert np.ptp(res.arrays["gradcam/maps"][0]) == 0  # the premise: flat trained maps
    v = res.verdicts["gradcam"]
    assert v["passes"] is None and res.passes("gradcam") is None
    assert v["verdict"].startswith("inconclusive")
    assert v["images_judged"] == 0 and v["flat_images"] == ["image0", "image1"]
    assert np.isnan(v["final_spearman"])
    assert all(row["n"] == 0 for row in res.table)
    warns = res.meta["warnings"]
    assert any(w.startswith("image0: the gradcam map for") and "is flat" in w for w in warns)
    assert any("left out of the verdict" in w for w in warns)
    assert "inconclusive" in repr(res)
    res.figures()  # draws with no image to judge


def test_empty_region_is_inconclusive_and_warned() -> None:
    """Target region:cat with no cat pixel: every map is zero, flat vs flat is Spearman 1, and
    it said FLAGGED ("they do not explain this model")."""
    torch.manual_seed(0)
    seg = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 3, 1),
    ).eval()  # fmt: skip
    with torch.no_grad():
        seg[4].bias.copy_(torch.tensor([10.0, -10.0, 0.0]))  # background everywhere
    lens = netlens.load(seg, input_size=32, classes=["bg", "cat", "dog"])
    res = lens.run("sanity", uint8_images(2), method="gradcam", layer="2", target="region:cat")
    assert float(np.abs(res.arrays["gradcam/maps"]).max()) == 0.0
    assert res.passes("gradcam") is None
    assert "FLAGGED" not in res.verdicts["gradcam"]["verdict"]
    assert any("region for cat is empty" in w for w in res.meta["warnings"])


class HalfFlat(CamMethod):
    """The input's red channel as the map, zero for the first image of every call."""

    name = "halfflat"
    needs_grads = False

    def weights(self, ctx: CamContext) -> torch.Tensor:
        return torch.ones(len(ctx.x), 1)

    def combine(self, ctx: CamContext, weights: torch.Tensor) -> torch.Tensor:
        out = ctx.x[:, 0].clone()
        out[0] = 0
        return out


class HalfFlatPlugin:
    @hookimpl
    def netlens_register_cam_methods(self, registry) -> None:
        registry.add("halfflat", HalfFlat)


def test_images_with_a_flat_map_are_left_out_of_the_verdict() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()  # fmt: skip
    lens = netlens.load(net, input_size=16, host=PluginHost([HalfFlatPlugin()]))
    res = lens.run("sanity", uint8_images(3, 16), method="halfflat", layer="0")
    v = res.verdicts["halfflat"]
    assert v["images_judged"] == 2 and v["flat_images"] == ["image0"]
    assert v["passes"] is False and "1 image(s) with a flat map left out" in v["verdict"]
    assert v["final_spearman"] == pytest.approx(1.0)
    assert all(row["n"] == 2 for row in res.table)


def test_randomization_metric_leaves_flat_maps_out() -> None:
    """evaluate's randomization score of a flat map was 0.0 (the best score)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    x = torch.randn(2, 3, 8, 8)
    heat = np.zeros((2, 8, 8), np.float32)
    heat[1] = np.arange(64).reshape(8, 8)

    def explain(model: nn.Module, xs: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
        return xs[:, 0].detach().numpy()

    out = Randomization()(net, x, heat, np.zeros(2, int), explain=explain)
    assert np.isnan(out["score"][0]) and np.isnan(out["ssim"][0])
    assert np.isfinite(out["score"][1])


# -- 2. cascade order ------------------------------------------------------------------------
def test_torchvision_vit_pos_embedding_after_the_encoder_layers() -> None:
    """``pos_embedding`` (the encoder's own parameter, added at its input) was randomised second,
    right after the head: the encoder's call *completes* after its layers'."""
    model, x = tiny_vit(), torch.randn(1, 3, 32, 32)
    steps = cascade_blocks(model, 4, x)
    names = [s for s, _ in steps]
    assert names == [
        "heads.head",
        "encoder.ln",
        "encoder.layers.encoder_layer_1",  # a stack holding most of the model: a step each
        "encoder.layers.encoder_layer_0",
        "encoder (pos_embedding)",
        "conv_proj",
        ROOT_STEP,
    ]
    assert dict(steps)["encoder (pos_embedding)"] == ["encoder"]
    assert [s for s in names if s != ROOT_STEP] == reference_order(model, x, steps)


def _timm_vit() -> tuple[nn.Module, int]:
    timm = pytest.importorskip("timm")
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8), 32


def _timm_xcit() -> tuple[nn.Module, int]:
    timm = pytest.importorskip("timm")
    return timm.create_model("xcit_nano_12_p16_224", img_size=64), 64


class ParentOwnsScale(nn.Module):
    """A block whose own parameter scales its input before its children (used at its start)."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(1, 4, 1, 1))
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x * self.gain))


def _toy_parent() -> tuple[nn.Module, int]:
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), ParentOwnsScale(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 2),
    )  # fmt: skip
    return net, 8


@pytest.mark.parametrize("make", [_timm_vit, _timm_xcit, _toy_parent], ids=lambda f: f.__name__)
def test_cascade_order_matches_the_pre_hook_reference(make) -> None:
    model, size = make()
    model.eval()
    x = torch.randn(1, 3, size, size)
    steps = cascade_blocks(model, 4, x)
    got = [s for s, _ in steps if s != ROOT_STEP]
    assert got == reference_order(model, x, steps)


def test_toy_parent_step_is_named_by_its_parameter() -> None:
    model, size = _toy_parent()
    names = [s for s, _ in cascade_blocks(model.eval(), 4, torch.randn(1, 3, size, size))]
    assert names == ["4", "1.norm", "1.conv", "1 (gain)", "0"]


# -- 3. state the cascade leaves behind ------------------------------------------------------
def test_batchnorm_without_affine_is_reset() -> None:
    """BatchNorm(affine=False) has no parameters: its trained statistics survived."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, affine=False), nn.ReLU(),
        nn.Conv2d(8, 8, 3), nn.InstanceNorm2d(8, track_running_stats=True), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()  # fmt: skip
    with torch.no_grad():
        for i in (1, 4):
            net[i].running_mean.uniform_(1, 2)
            net[i].running_var.uniform_(3, 4)
    x = torch.randn(1, 3, 16, 16)
    work = model_copy(net)
    steps = cascade_blocks(work, 4, x)
    assert [s for s, _ in steps] == ["8", "4", "3", "1", "0"]
    for k, (_, members) in enumerate(steps):
        randomize_modules(work, members, k)
    for i in (1, 4):
        assert torch.equal(work[i].running_mean, torch.zeros(8))
        assert torch.equal(work[i].running_var, torch.ones(8))
        assert net[i].running_mean.min() >= 1  # the user's model untouched
    kept = [
        n
        for n, v in net.state_dict().items()
        if v.is_floating_point() and torch.equal(v, work.state_dict()[n])
    ]
    assert kept == []


# -- 4. display and record -------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_cnn_run() -> tuple:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).eval()  # fmt: skip
    lens = netlens.load(net, input_size=16)
    x = uint8_images(2, 16)
    return lens, x, lens.run("sanity", x, method="gradcam")


def test_verdict_in_notebook_display(small_cnn_run) -> None:
    """The verdict was only in the strip figure's title, not in the HTML card or the repr."""
    _, _, res = small_cnn_run
    verdict = res.verdicts["gradcam"]["verdict"]
    assert verdict in res._repr_html_().replace("&lt;", "<").replace("&gt;", ">")
    assert f"gradcam: {verdict}" in repr(res)
    assert f"gradcam: {verdict}" in res._repr_mimebundle_()["text/plain"]


def test_layer_explained_is_recorded(small_cnn_run) -> None:
    """meta["layer"] and the run header said "auto", never the layer explained."""
    lens, x, res = small_cnn_run
    cam_layers = lens.cam(x).meta["layers"]
    assert cam_layers != ["auto"]
    assert res.meta["layer"] == ", ".join(cam_layers) and res.meta["layer_auto"] is True
    assert res.meta["run"]["layers"] == cam_layers and res.meta["layers"] == cam_layers

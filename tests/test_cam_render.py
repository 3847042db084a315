"""Overlays at the original size, the side-by-side figure, CamResult output, plugin methods."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import netlens
from netlens.analyzers.cam_base import CamMethod
from netlens.images import Preprocess
from netlens.plugins import hookimpl
from netlens.plugins.manager import PluginHost
from netlens.render.cam_figure import cam_figure
from netlens.render.overlay import colorize, overlay


@pytest.mark.parametrize("hw", [(90, 150), (200, 120), (64, 64)])
@pytest.mark.parametrize("crop_pct", [0.875, 1.0])
def test_crop_box_is_where_preprocess_takes_the_input_from(
    hw: tuple[int, int], crop_pct: float
) -> None:
    h0, w0 = hw
    ys, xs = np.mgrid[0:h0, 0:w0]
    img = np.stack([ys * 255 // (h0 - 1), xs * 255 // (w0 - 1), np.zeros_like(ys)], -1)
    pre = Preprocess(
        size=(32, 32), mean=(0, 0, 0), std=(1, 1, 1), crop_pct=crop_pct, interpolation="nearest"
    )
    seen = pre(img.astype(np.uint8)).numpy() * 255  # rows/cols of the original, encoded
    top, bottom, left, right = pre.crop_box((h0, w0))
    ty, tx = 1.5 + (bottom - top) / 32, 1.5 + (right - left) / 32  # one input pixel + rounding
    assert abs(seen[0, 0, 0] * (h0 - 1) / 255 - top) <= ty
    assert abs(seen[0, -1, 0] * (h0 - 1) / 255 - (bottom - 1)) <= ty
    assert abs(seen[1, 0, 0] * (w0 - 1) / 255 - left) <= tx
    assert abs(seen[1, 0, -1] * (w0 - 1) / 255 - (right - 1)) <= tx


def test_overlay_keeps_the_original_size_and_puts_heat_where_the_map_is() -> None:
    image = np.full((60, 100, 3), 128, np.uint8)
    heat = np.zeros((8, 8), np.float32)
    heat[:4, :4] = 1.0  # top-left hot
    out = overlay(image, heat, alpha=0.6)
    assert out.shape == image.shape and out.dtype == np.uint8
    hot, cold = out[5, 5].astype(int), out[55, 95].astype(int)
    assert hot[0] > hot[2] and cold[2] > cold[0]  # jet: red where hot, blue where cold
    np.testing.assert_array_equal(colorize(np.array([[0.0, 1.0]]))[0, 0], [0, 0, 128])


def test_cam_figure_has_image_overlays_and_bars() -> None:
    img = np.zeros((40, 50, 3), np.uint8)
    fig = cam_figure(
        img, [img, img], ["gradcam · cat", "gradcam · dog"], ["cat", "dog"], [0.7, 0.2], title="x"
    )
    assert len(fig.axes) == 4
    bars = fig.axes[-1]
    assert [t.get_text() for t in bars.get_yticklabels()] == ["cat", "dog"]
    assert list(bars.get_yticks()) == [1, 0]  # the most probable class on top


def small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    ).eval()


def test_result_save_show_and_inline_png(tmp_path, capsys) -> None:  # noqa: ANN001
    arrays = [np.random.default_rng(i).integers(0, 255, (30, 40, 3), np.uint8) for i in range(2)]
    lens = netlens.Lens(small(), Preprocess(size=(16, 16)), classes=["a", "b"])
    r = lens.cam(arrays, layer="1")
    files = r.save(tmp_path)
    names = sorted(p.name for p in files)
    t = [r.target_name(i) for i in range(2)]
    assert names == sorted(
        [
            "cam.csv",
            "cam.json",
            "cam.manifest.json",
            f"image0_gradcam_1_{t[0]}.npy",
            f"image0_gradcam_1_{t[0]}.png",
            "image0_gradcam_1_figure.png",
            f"image1_gradcam_1_{t[1]}.npy",
            f"image1_gradcam_1_{t[1]}.png",
            "image1_gradcam_1_figure.png",
        ]
    )
    assert r._repr_png_().startswith(b"\x89PNG")
    assert r.overlay(0).shape == (30, 40, 3)


class SquaredGrads(CamMethod):
    """A third-party method: squared gradients averaged per channel."""

    name = "gradsq"

    def weights(self, ctx):  # noqa: ANN001, ANN201
        return (ctx.grads**2).mean(dim=(2, 3))


class Plugin:
    @hookimpl
    def netlens_register_cam_methods(self, registry) -> None:  # noqa: ANN001
        registry.add("gradsq", SquaredGrads)


def test_a_plugin_adds_a_cam_method_through_the_hook() -> None:
    host = PluginHost(plugins=[Plugin()])
    names = host.cam_methods.names()
    for builtin in (
        "cam",
        "gradcam",
        "gradcam++",
        "xgradcam",
        "layercam",
        "hirescam",
        "scorecam",
        "eigencam",
        "ablationcam",
    ):
        assert builtin in names
    assert "gradsq" in names and "cam" in host.analyzers.names()
    lens = netlens.Lens(small(), Preprocess(size=(16, 16)), host=host)
    r = lens.cam(torch.randn(2, 3, 16, 16), method="gradsq", layer="1")
    assert r.meta["method"] == "gradsq" and r.heatmaps.shape == (2, 16, 16)


def test_display_scale_enlarges_small_and_shrinks_huge_pictures() -> None:
    from netlens.render.overlay import display_scale

    assert display_scale((28, 28), 256, 2048) == 10.0  # whole pixels: 280 px
    assert display_scale((300, 400), 256, 2048) == 1.0
    assert display_scale((6000, 8000), 256, 2048) == 2048 / 8000
    out = overlay(np.zeros((28, 28, 3), np.uint8), np.eye(7, dtype=np.float32), min_side=256)
    assert out.shape == (280, 280, 3)
    assert (out[:40, :40] != out[-40:, :40]).any()  # the map's diagonal is still where it was

"""Rendering: signed maps on a diverging scale symmetric around zero, with a colour bar."""

from __future__ import annotations

import numpy as np
from netlens_captum.render import DIVERGING, SEQUENTIAL, attribution_figure, color_limits

from netlens.render.figures import figure_array


def test_color_limits_symmetric_for_signed_maps():
    amap = np.linspace(-1.0, 3.0, 1000).reshape(10, 100)
    lo, hi = color_limits(amap, signed=True)
    assert lo == -hi and 2.9 < hi <= 3.0
    assert color_limits(np.abs(amap), signed=False)[0] == 0.0
    assert color_limits(np.zeros((4, 4)), signed=True) == (-1.0, 1.0)


def test_figure_has_input_map_colorbar_and_overlay():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    amap = np.zeros((32, 32), np.float32)
    amap[:, :16], amap[:, 16:] = -2.0, 2.0
    fig = attribution_figure(image, amap, "test", signed=True)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 3 and len(fig.axes) == 4  # + the colour bar
    shown = panels[1].images[0]
    assert shown.get_cmap().name == DIVERGING and shown.get_clim() == (-2.0, 2.0)
    pixels = figure_array(fig)
    reds = (pixels[..., 0] > 150) & (pixels[..., 2] < 100)
    blues = (pixels[..., 2] > 150) & (pixels[..., 0] < 100)
    assert reds.sum() > 200 and blues.sum() > 200  # both signs visible
    unsigned = attribution_figure(image, np.abs(amap), "test", signed=False)
    assert [ax for ax in unsigned.axes if ax.images][1].images[0].get_cmap().name == SEQUENTIAL

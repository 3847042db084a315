"""The figure of a features Result: one layer's selected maps for one image, as a grid.

Pure: arrays in, a figure out (see :mod:`netlens.analyzers.features` for the arrays).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .grids import grid_figure, normalize_tiles, overlay_tiles

__all__ = ["feature_figure"]


def feature_figure(
    arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], layer: str, index: int
) -> Figure:
    """The grid of one layer's selected maps for image ``index`` of a features result."""
    maps = arrays[f"{layer}:maps"][index]
    chans = arrays[f"{layer}:channels"][index]
    means = arrays[f"{layer}:means"][index]
    mode = "tile" if meta["normalize"] == "channel" else "joint"
    shown, span = normalize_tiles(maps, mode=mode)
    if meta["overlay"]:
        stride = (meta.get("strides") or {}).get(layer)
        shown, span = overlay_tiles(shown, arrays["images"][index], alpha=0.5, stride=stride), None
    labels = [f"{int(c)}: {means[int(c)]:.2g}" for c in chans]
    h, w = meta["shapes"][layer][-2:]
    how = (
        "chosen channels"
        if meta["channels"] is not None
        else (f"top {len(chans)} of {meta['shapes'][layer][1]} channels by mean activation")
    )
    scale = "per-channel scale" if mode == "tile" else "one scale"
    scale += ", over the input" if meta["overlay"] else ""
    title = (
        f"{layer} on {meta['images'][index]}: {how} ({h}×{w} maps, {scale})\n"
        "labels = channel: mean activation"
    )
    fig, _ = grid_figure(
        shown,
        labels,
        title=title,
        cmap="viridis",
        colorbar=span,
        colorbar_label="activation",
        tile_inches=1.3,
        reference=None if meta["overlay"] else arrays["images"][index],
        reference_label="input (as the model sees it)",
    )
    return fig

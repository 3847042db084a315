"""Attribution pictures: pure functions from numpy arrays to matplotlib figures (no pyplot)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from netlens.render.figures import new_figure

__all__ = ["attribution_figure", "color_limits"]

DIVERGING = "RdBu_r"  # red: evidence for the target, blue: against, white: none
SEQUENTIAL = "inferno"


def color_limits(amap: np.ndarray, signed: bool, percentile: float = 99.5) -> tuple[float, float]:
    """Colour scale limits: symmetric around 0 for signed maps, from 0 otherwise.

    The limit is a high percentile of ``|amap|`` so a few extreme pixels do not wash out the
    rest (values beyond it are clipped to the end colours).
    """
    top = float(np.percentile(np.abs(amap), percentile)) if amap.size else 0.0
    top = top if top > 0 else float(np.abs(amap).max()) or 1.0
    return (-top, top) if signed else (0.0, top)


def attribution_figure(
    image: np.ndarray, amap: np.ndarray, title: str, *, signed: bool = True
) -> Figure:
    """Input | attribution map with a colour bar | map over the grey input.

    Args:
        image: H×W×3 uint8 input as the model saw it (resized, cropped).
        amap: H×W attribution map (summed over channels).
        title: the figure's title (method, class, probability).
        signed: diverging colour map symmetric around 0; else a sequential one from 0.
    """
    vmin, vmax = color_limits(amap, signed)
    cmap = DIVERGING if signed else SEQUENTIAL
    fig = new_figure(9.0, 3.4, dpi=100)
    axes = fig.subplots(1, 3)
    axes[0].imshow(image, interpolation="nearest")
    axes[0].set_title("input", fontsize=9)
    shown = axes[1].imshow(amap, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    axes[1].set_title("attribution" + (" (signed)" if signed else ""), fontsize=9)
    bar = fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04, format="%.2g")
    bar.ax.tick_params(labelsize=7)
    grey = image.astype(np.float32).mean(axis=2)
    axes[2].imshow(grey, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    axes[2].imshow(
        amap, cmap=cmap, vmin=vmin, vmax=vmax, alpha=_alpha(amap, vmax), interpolation="nearest"
    )
    axes[2].set_title("overlay", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    return fig


def _alpha(amap: np.ndarray, top: float) -> np.ndarray:
    """Opacity grows with |attribution|, so weak evidence leaves the input visible."""
    return np.clip(np.abs(amap) / (top or 1.0), 0.0, 1.0) * 0.85

"""The side-by-side CAM figure: image | overlay(s) | top predictions with probabilities."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from .figures import new_figure

__all__ = ["cam_figure"]


def cam_figure(
    image: np.ndarray,
    overlays: Sequence[np.ndarray],
    overlay_titles: Sequence[str],
    top_names: Sequence[str],
    top_probs: Sequence[float],
    *,
    title: str = "",
) -> Figure:
    """A one-row figure: the image, each overlay, and a bar chart of the top predictions.

    Args:
        image: the original image, H×W×3 uint8.
        overlays: heatmap overlays (same size as ``image``), one per explained class.
        overlay_titles: a caption per overlay (method and class).
        top_names: class names of the most probable classes, best first.
        top_probs: their probabilities.
        title: figure title (image name, layer).
    """
    n = 2 + len(overlays)
    fig = new_figure(3.2 * n, 3.6, dpi=100)
    axes = fig.subplots(1, n, width_ratios=[1.0] * (n - 1) + [1.1])
    _show(axes[0], image, "image")
    for ax, ov, cap in zip(axes[1:-1], overlays, overlay_titles, strict=True):
        _show(ax, ov, cap)
    bars = axes[-1]
    ys = np.arange(len(top_names))[::-1]
    bars.barh(ys, top_probs, color="#4c72b0")
    bars.set_yticks(ys, [_short(s) for s in top_names], fontsize=9)
    bars.set_xlim(0, 1)
    bars.set_xlabel("probability")
    bars.set_title("top predictions", fontsize=10)
    for y, p in zip(ys, top_probs, strict=True):
        bars.text(min(p + 0.02, 0.78), y, f"{p:.1%}", va="center", fontsize=8)
    bars.spines[["top", "right"]].set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _show(ax, image: np.ndarray, caption: str) -> None:  # noqa: ANN001
    ax.imshow(image, interpolation="bilinear" if min(image.shape[:2]) > 64 else "nearest")
    ax.set_title(_short(caption, 40), fontsize=10)
    ax.set_axis_off()


def _short(text: str, n: int = 18) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"

"""The side-by-side CAM figure: image | overlay(s) | top predictions with probabilities."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from .figures import new_figure

__all__ = ["MAX_SIDE", "cam_figure"]

MAX_SIDE = 1024  # longest side of a figure's pictures (its panels are about 320 px wide)


def cam_figure(
    image: np.ndarray,
    overlays: Sequence[np.ndarray],
    overlay_titles: Sequence[str],
    top_names: Sequence[str],
    top_probs: Sequence[float],
    *,
    title: str = "",
    overlay_probs: Sequence[float] | None = None,
    values: bool = False,
) -> Figure:
    """A one-row figure: the image, each overlay, and a bar chart of the top predictions.

    Args:
        image: the original image, H×W×3 uint8 (a photo shrunk to :data:`MAX_SIDE`: drawn
            full size, a 48 MP photo takes matplotlib a minute and gigabytes).
        overlays: heatmap overlays (same size as ``image``), one per explained class.
        overlay_titles: a caption per overlay (method and class).
        top_names: class names of the most probable classes, best first.
        top_probs: their probabilities.
        title: figure title (image name, layer).
        overlay_probs: the probability of each overlay's class, written under it (a class
            below 5 % is marked weak: every map is scaled from its own minimum to its own
            maximum, so colour alone cannot tell a weak class from a strong one).
        values: the scores are a regression's output values, not probabilities: bars on
            the values' own scale, no percentages.
    """
    n = 2 + len(overlays)
    fig = new_figure(3.2 * n, 3.6, dpi=100)
    axes = fig.subplots(1, n, width_ratios=[1.0] * (n - 1) + [1.1])
    _show(axes[0], image, "image")
    probs = list(overlay_probs) if overlay_probs is not None else [None] * len(overlays)
    for ax, ov, cap, p in zip(axes[1:-1], overlays, overlay_titles, probs, strict=True):
        _show(ax, ov, cap)
        _scale(ax, p)
    bars = axes[-1]
    ys = np.arange(len(top_names))[::-1]
    bars.barh(ys, top_probs, color="#4c72b0")
    bars.set_yticks(ys, [_short(s) for s in top_names], fontsize=9)
    if values:
        bars.axvline(0, color="#888", lw=0.8)
        bars.set_xlabel("output value")
        bars.set_title("largest outputs", fontsize=10)
        for y, v in zip(ys, top_probs, strict=True):
            bars.text(max(v, 0), y, f" {v:.4g}", va="center", ha="left", fontsize=8)
    else:
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


def _scale(ax, p: float | None) -> None:  # noqa: ANN001
    """A colour bar under an overlay (the map's own min → its own max) and the class
    probability."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    cax = ax.inset_axes((0.08, -0.075, 0.84, 0.04))  # an inset: the figure's axes stay as they are
    bar = ax.figure.colorbar(
        ScalarMappable(Normalize(0, 1), cmap="jet"), cax=cax, orientation="horizontal"
    )
    bar.set_ticks([0, 1], labels=["map min", "map max"], fontsize=7)
    if p is not None:
        weak = p < 0.05
        text = f"p = {p:.1%}" + (" — weak class" if weak else "")
        ax.text(
            0.5,
            -0.2,
            text,
            transform=ax.transAxes,
            ha="center",
            va="top",
            fontsize=9,
            color="#a33" if weak else "black",
        )


def _short(text: str, n: int = 18) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"

"""How a CAM result shows itself: one card per image (image, overlay per class with its
probability, top predictions) in HTML, and a grid figure with one colour bar as the plain PNG."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .png import png_uri

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..analyzers.base import Result
    from ..analyzers.cam_result import CamResult

__all__ = ["WEAK", "cam_grid_figure", "cam_rows", "colour_legend", "is_cam", "shrunk"]

WEAK = 0.05  # a class below this probability is marked "weak" next to its map
THUMB = 288  # longest side, in pixels, of an image embedded in a CAM card


def is_cam(result: Result) -> bool:
    from ..analyzers.cam_result import CamResult

    return isinstance(result, CamResult)


def _thumb(image: np.ndarray) -> np.ndarray:
    """Large photos shrunk to :data:`THUMB` pixels on the long side (small images kept)."""
    return shrunk(image, THUMB)


def shrunk(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` shrunk to ``side`` pixels on its long side (smaller ones kept), to the size
    and pixels an overlay of it drawn with ``max_side=side`` has (``render.overlay``)."""
    import cv2

    from .overlay import display_scale

    h, w = image.shape[:2]
    s = display_scale((h, w), max_side=side)
    if s == 1.0:
        return image
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_AREA)


def cam_rows(result: CamResult, indices: list[int], top: int = 3) -> list[dict[str, Any]]:
    """Per image: the picture, an overlay per explained class (with p), the top predictions."""
    rows = []
    method = result.meta["method"]
    for i in indices:
        image = result.original(i)
        small = max(image.shape[:2]) < 96
        overlays = []
        for k, c in enumerate(result.arrays["targets"][i]):
            p = _prob(result, i, int(c))
            overlays.append(
                {
                    "uri": png_uri(result.overlay(i, k, max_side=THUMB)),
                    "label": f"{method} · {result.target_name(i, k)}",
                    "p": p,
                    "weak": p is not None and p < WEAK,
                    "pixelated": small,
                }
            )
        rows.append(
            {
                "name": result.names[i],
                "image": png_uri(_thumb(image)),
                "pixelated": small,
                "overlays": overlays,
                "top": _top(result, i, top),
            }
        )
    return rows


def _top(result: CamResult, i: int, top: int) -> list[dict[str, Any]]:
    """The top predictions: ``p`` (a probability) and ``bar`` (its share of the bar); a
    regression's largest outputs as ``value`` (no percentage), bars scaled to the largest."""
    scores = result.probs[i]
    order = np.argsort(-scores)[:top]
    if result.meta.get("task") != "regression":
        return [
            {"name": result.class_name(int(c)), "p": float(scores[c]), "bar": float(scores[c])}
            for c in order
        ]
    scale = float(np.abs(scores).max()) or 1.0
    return [
        {"name": result.class_name(int(c)), "p": None, "value": float(scores[c]),
         "bar": max(0.0, float(scores[c]) / scale)}
        for c in order
    ]  # fmt: skip


def _prob(result: CamResult, i: int, c: int) -> float | None:
    """The probability of target class ``c`` of image ``i`` (None: the target is no class)."""
    classification = result.meta.get("task", "multiclass") in ("multiclass", "multilabel", "binary")
    return float(result.probs[i, c]) if classification and 0 <= c < result.probs.shape[1] else None


def colour_legend(cmap: str = "jet") -> str:
    """The heatmap colour scale, 0 (left) to the map's maximum (right), as a data URI."""
    from .overlay import colorize

    return png_uri(colorize(np.tile(np.linspace(0.0, 1.0, 160), (10, 1)), cmap))


def cam_grid_figure(result: CamResult, indices: list[int]) -> Figure:
    """Rows of image | overlay per class (with p), one colour bar: the plain-PNG view."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from .figures import new_figure

    k = result.arrays["targets"].shape[1]
    fig = new_figure(2.0 * (k + 1) + 0.9, 2.15 * len(indices) + 0.2, dpi=100)
    axes = np.atleast_2d(fig.subplots(len(indices), k + 1, squeeze=False))
    for row, i in zip(axes, indices, strict=True):
        _draw(row[0], _thumb(result.original(i)), result.names[i], "black")
        for k_, c in enumerate(result.arrays["targets"][i]):
            p = _prob(result, i, int(c))
            weak = p is not None and p < WEAK
            label = result.target_name(i, k_)
            if p is not None:
                label += f"\np = {_pct(p)}" + (" (weak)" if weak else "")
            overlay = result.overlay(i, k_, max_side=THUMB)  # a 48 MP photo drawn whole: a minute
            _draw(row[k_ + 1], overlay, label, "#a33" if weak else "black")
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap="jet"), ax=axes, fraction=0.05)
    bar.set_ticks([0, 1], labels=["map min", "map max"])
    bar.set_label("each map from its own minimum to its own maximum", fontsize=8)
    return fig


def _draw(ax: Any, image: np.ndarray, caption: str, colour: str) -> None:
    ax.imshow(image, interpolation="nearest" if max(image.shape[:2]) < 96 else "bilinear")
    ax.set_title(caption, fontsize=8, color=colour)
    ax.set_axis_off()


def _pct(p: float) -> str:
    from ..report.templating import pct

    return pct(p)

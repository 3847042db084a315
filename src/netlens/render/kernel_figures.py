"""Figures of layer weights: RGB kernel grids, reduced per-filter tiles, weight matrices.

Made from the arrays a kernels Result holds (``tiles``, ``order``, ``matrix``) and its ``meta``
(see :mod:`netlens.analyzers.kernels`). All pure: arrays in, figures out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .figures import new_figure
from .grids import Grid, grid_figure, normalize_tiles

__all__ = [
    "DEAD_GREY",
    "kernel_display",
    "kernels_figure",
    "mark_dead",
    "matrix_figure",
]

_SIGNED = {"mean", "channel", "none"}
DEAD_GREY = (0.5, 0.5, 0.5)  # near-zero filters, in every view: not a colour of viridis/RdBu_r


def kernel_display(
    tiles: np.ndarray, *, rgb: bool, signed: bool, normalize: str
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Weights → display values in [0, 1] (and the raw range a colour bar shows, if joint).

    RGB tiles use each filter's (or the layer's) min..max, the classic AlexNet picture; signed
    single-channel tiles are scaled symmetrically so that zero is the middle of the colour map.
    """
    mode = "tile" if normalize == "filter" else "joint"
    return normalize_tiles(tiles, mode=mode, symmetric=signed and not rgb)


def kernels_figure(
    arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
) -> tuple[Figure, Grid | None]:
    """The picture of a kernels Result: a tile grid, or a heatmap for matrix views."""
    finite = not meta.get("non_finite")  # NaN/Inf would blank their tile, flatten the others
    if meta["view"] == "matrix":
        matrix = arrays["matrix"] if finite else _zeroed(arrays["matrix"])
        return matrix_figure(
            matrix, title=_title(meta), xlabel=meta["matrix_x"], ylabel=meta["matrix_y"]
        ), None
    tiles = arrays["tiles"] if finite else _zeroed(arrays["tiles"])
    rgb = tiles.ndim == 4
    signed = meta["reduce"] in _SIGNED
    display, span = kernel_display(tiles, rgb=rgb, signed=signed, normalize=meta["normalize"])
    display, labels = mark_dead(
        display, arrays["order"], meta.get("near_zero") or (), meta.get("non_finite") or ()
    )
    h, w = display.shape[1:3]
    tile_inches = 0.9 if max(h, w) <= 16 else 1.4
    fig, grid = grid_figure(
        display,
        labels,
        title=_title(meta),
        cmap="RdBu_r" if signed else "viridis",
        colorbar=span,
        colorbar_label="weight" if meta["reduce"] != "l2" else "L2 over inputs",
        tile_inches=tile_inches,
    )
    _paint_dead(fig.axes[0], grid, labels)
    return fig, grid


def _zeroed(values: np.ndarray) -> np.ndarray:
    return np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)


def _paint_dead(ax: Any, grid: Grid, labels: Sequence[str]) -> None:
    """Cover near-zero tiles with flat RGB grey: a colour map would draw 0.5 as teal (viridis)
    or near-white (RdBu_r, hardly apart from the background). Tiles of filters holding NaN or
    Inf are crossed out in red on white, their labels red."""
    from matplotlib.patches import Rectangle

    h, w = grid.tile_hw
    bad = {label for label in labels if label.endswith(" nan")}
    for (r, c), label in zip(grid.origins, labels, strict=False):
        if label.endswith(" dead") or label in bad:
            colour = "white" if label in bad else DEAD_GREY
            ax.add_patch(
                Rectangle((c - 0.5, r - 0.5), w, h, facecolor=colour, edgecolor="none", lw=0)
            )
        if label in bad:
            x0, x1, y0, y1 = c - 0.5, c + w - 0.5, r - 0.5, r + h - 0.5
            for ys in ((y0, y1), (y1, y0)):
                ax.plot((x0, x1), ys, color=NON_FINITE_RED, lw=1.5, scalex=False, scaley=False)
    for text in ax.texts:
        if text.get_text() in bad:
            text.set_color(NON_FINITE_RED)


NON_FINITE_RED = "#d62728"


def mark_dead(
    display: np.ndarray,
    order: np.ndarray,
    near_zero: Sequence[int],
    non_finite: Sequence[int] = (),
) -> tuple[np.ndarray, list[str]]:
    """Near-zero filters drawn flat (0.5; :func:`kernels_figure` paints them grey in every view)
    and labelled, never as a stretched noise pattern (per-filter scaling would blow a 1e-9
    filter up to full contrast); filters holding NaN or Inf labelled ``nan`` (crossed out)."""
    dead, bad = {int(i) for i in near_zero}, {int(i) for i in non_finite}
    shown = display.copy()
    labels = []
    for k, i in enumerate(int(j) for j in order):
        if i in dead or i in bad:
            shown[k] = 0.5
        labels.append(f"{i} nan" if i in bad else f"{i} dead" if i in dead else str(i))
    return shown, labels


def _title(meta: Mapping[str, Any]) -> str:
    shape = "×".join(str(s) for s in meta["weight_shape"])
    head = f"{meta['layer']} ({meta['type']}, weight {shape})"
    if meta.get("weight_used"):  # standardised, pruned, weight-normed: as the layer uses them
        head += f"\nas used: {str(meta['weight_used']).split(', then ')[-1][:70]}"
    if meta["view"] == "matrix":
        return f"{head}\n1×1 / dense weights as a matrix"
    what = {
        "rgb": "RGB filters",
        "mean": "mean over input channels",
        "l2": "L2 norm over input channels",
        "channel": f"input channel {meta.get('channel')}",
        "none": "single-input filters" + (" (depthwise)" if meta.get("depthwise") else ""),
    }[meta["reduce"]]
    if meta.get("reshaped_to"):
        what = f"unit weights as {'×'.join(map(str, meta['reshaped_to']))} inputs, {what}"
    scale = "per-filter scale" if meta["normalize"] == "filter" else "one scale"
    order = ", sorted by norm" if meta.get("sorted") else ""
    shown = f", first {meta['shown']} of {meta['total']}" if meta["shown"] < meta["total"] else ""
    dead = len(meta.get("near_zero") or ())
    flat = f"; grey = {dead} near-zero filter(s)" if dead else ""
    return f"{head}\n{what}; {scale}{order}{shown}; labels = filter index{flat}"


def matrix_figure(matrix: np.ndarray, *, title: str, xlabel: str, ylabel: str) -> Figure:
    """A signed weight matrix as a heatmap (zero white), square cells unless very elongated."""
    m = np.asarray(matrix, dtype=np.float32)
    rows, cols = m.shape
    lim = float(np.abs(m).max()) or 1.0
    cell = min(0.25, 9.0 / max(rows, cols))
    ratio = rows / cols
    square = 1 / 6 <= ratio <= 6
    width = float(np.clip(cols * cell if square else 7.0, 3.0, 11.0)) + 1.2
    height = float(np.clip(rows * cell if square else 5.0, 2.0, 11.0)) + 1.0
    fig = new_figure(width, height)
    ax = fig.add_subplot()
    im = ax.imshow(
        m,
        cmap="RdBu_r",
        vmin=-lim,
        vmax=lim,
        interpolation="nearest",
        aspect="equal" if square else "auto",
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02, label="weight")
    return fig

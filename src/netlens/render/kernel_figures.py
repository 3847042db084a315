"""Figures for layer weights and activation statistics.

Weights: RGB kernel grids, reduced per-filter tiles, weight matrices, made from the arrays a
kernels Result holds (``tiles``, ``order``, ``matrix``) and its ``meta`` (see
:mod:`netlens.analyzers.kernels`). Activations: per-layer dead/near-zero fractions and histograms
(see :mod:`netlens.analyzers.stats`). All pure: arrays in, figures out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .figures import new_figure
from .grids import Grid, grid_figure, normalize_tiles

__all__ = [
    "dead_fraction_figure",
    "histograms_figure",
    "kernel_display",
    "kernels_figure",
    "mark_dead",
    "matrix_figure",
]

_SIGNED = {"mean", "channel", "none"}


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
    if meta["view"] == "matrix":
        return matrix_figure(
            arrays["matrix"], title=_title(meta), xlabel=meta["matrix_x"], ylabel=meta["matrix_y"]
        ), None
    rgb = arrays["tiles"].ndim == 4
    signed = meta["reduce"] in _SIGNED
    display, span = kernel_display(
        arrays["tiles"], rgb=rgb, signed=signed, normalize=meta["normalize"]
    )
    display, labels = mark_dead(display, arrays["order"], meta.get("near_zero") or ())
    h, w = display.shape[1:3]
    tile_inches = 0.9 if max(h, w) <= 16 else 1.4
    return grid_figure(
        display,
        labels,
        title=_title(meta),
        cmap="RdBu_r" if signed else "viridis",
        colorbar=span,
        colorbar_label="weight" if meta["reduce"] != "l2" else "L2 over inputs",
        tile_inches=tile_inches,
    )


def mark_dead(
    display: np.ndarray, order: np.ndarray, near_zero: Sequence[int]
) -> tuple[np.ndarray, list[str]]:
    """Near-zero filters drawn as flat grey and labelled, never as a stretched noise pattern
    (per-filter scaling would blow a 1e-9 filter up to full contrast)."""
    dead = {int(i) for i in near_zero}
    shown = display.copy()
    labels = []
    for k, i in enumerate(int(j) for j in order):
        if i in dead:
            shown[k] = 0.5
        labels.append(f"{i} dead" if i in dead else str(i))
    return shown, labels


def _title(meta: Mapping[str, Any]) -> str:
    shape = "×".join(str(s) for s in meta["weight_shape"])
    head = f"{meta['layer']} ({meta['type']}, weight {shape})"
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


def dead_fraction_figure(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> Figure:
    """Horizontal bars per layer: fraction of dead units, dead channels and near-zero values."""
    names = [str(r["layer"]) for r in rows]
    n = len(names)
    fig = new_figure(7.5, max(2.2, 0.32 * n * 1.0 + 1.2))
    ax = fig.add_subplot()
    y = np.arange(n)
    series = [
        ("near_zero", "values ≤ eps", "#bbbbbb"),
        ("dead_units", "dead units", "#d62728"),
        ("dead_channels", "dead channels", "#7f0000"),
    ]
    height = 0.8 / len(series)
    for k, (key, label, colour) in enumerate(series):
        vals = [float(r[key]) for r in rows]
        ax.barh(y + (k - 1) * height, vals, height=height, color=colour, label=label)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(
        f"Activations over {meta['samples']} inputs (eps = {meta['eps']:g}); "
        "dead = ≤ eps on every input",
        fontsize=10,
    )
    return fig


def histograms_figure(
    hists: Sequence[tuple[str, np.ndarray, np.ndarray, float, float]],
    meta: Mapping[str, Any],
    *,
    max_layers: int = 36,
) -> Figure:
    """Small multiples: each layer's activation histogram (log10 counts), mean ± std marked.

    Args:
        hists: (layer, counts, bin edges, mean, std) per layer.
        meta: the stats meta (samples, eps).
        max_layers: draw at most this many layers (the first ones).
    """
    shown = list(hists)[:max_layers]
    cols = min(4, len(shown))
    rows = int(np.ceil(len(shown) / cols))
    height = 2.1 * rows + 0.6
    fig = new_figure(3.0 * cols, height)
    fig.set_layout_engine(None)  # fixed margins: constrained layout is slow for many axes
    top = 1 - 0.55 / height
    axes = fig.subplots(
        rows,
        cols,
        squeeze=False,
        gridspec_kw={
            "left": 0.06,
            "right": 0.98,
            "bottom": 0.3 / height,
            "top": top,
            "hspace": 0.5,
            "wspace": 0.28,
        },
    )
    for ax, (name, counts, edges, mean, std) in zip(axes.ravel(), shown, strict=False):
        ax.stairs(
            np.log10(np.asarray(counts, dtype=np.float64) + 1), edges, fill=True, color="#4c72b0"
        )
        ax.axvline(mean, color="#d62728", lw=1)
        ax.axvspan(mean - std, mean + std, color="#d62728", alpha=0.1)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(shown) :]:
        ax.set_visible(False)
    more = f" (first {len(shown)} of {len(hists)} layers)" if len(hists) > len(shown) else ""
    fig.suptitle(
        f"Activation histograms over {meta['samples']} inputs{more}; x = activation, "
        "y = log10(count + 1); red = mean ± std",
        y=1 - 0.12 / height,
        fontsize=10,
    )
    return fig

"""Figures of activation statistics: per-layer dead/near-zero fractions and histograms.

Made from a stats Result's table and arrays (see :mod:`netlens.analyzers.stats`). All pure:
arrays in, figures out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .figures import new_figure

__all__ = ["dead_fraction_figure", "histograms_figure"]


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
        hists: (layer, counts, bin edges, mean, std[, share of values outside the edges]) per
            layer.
        meta: the stats meta (samples, eps).
        max_layers: draw at most this many layers (the first ones).
    """
    import textwrap

    shown = list(hists)[:max_layers]
    cols = min(4, len(shown))
    rows = int(np.ceil(len(shown) / cols))
    more = f" (first {len(shown)} of {len(hists)} layers)" if len(hists) > len(shown) else ""
    title = (
        f"Activation histograms over {meta['samples']} inputs{more}; x = activation, "
        "y = log10(count + 1); red = mean ± std"
    )
    # wrapped to the figure's width (about 12 characters an inch at 10 pt): a figure of one
    # or two layers is narrower than the title
    lines = textwrap.wrap(title, max(24, int(12 * 3.0 * cols)))
    extra = 0.18 * (len(lines) - 1)
    height = 2.1 * rows + 0.6 + extra
    fig = new_figure(3.0 * cols, height)
    fig.set_layout_engine(None)  # fixed margins: constrained layout is slow for many axes
    top = 1 - (0.55 + extra) / height
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
    for ax, (name, counts, edges, mean, std, *rest) in zip(axes.ravel(), shown, strict=False):
        ax.stairs(
            np.log10(np.asarray(counts, dtype=np.float64) + 1), edges, fill=True, color="#4c72b0"
        )
        outside = float(rest[0]) if rest else 0.0
        if outside > 0:  # bins come from the first batch: say what lies beyond them
            ax.text(
                0.98, 0.94, f"{outside:.1%} outside" if outside >= 5e-4 else "<0.1% outside",
                transform=ax.transAxes,
                ha="right", va="top", fontsize=7, color="#d62728",
            )  # fmt: skip
        ax.axvline(mean, color="#d62728", lw=1)
        ax.axvspan(mean - std, mean + std, color="#d62728", alpha=0.1)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(shown) :]:
        ax.set_visible(False)
    fig.suptitle("\n".join(lines), y=1 - 0.12 / height, fontsize=10, va="top")
    return fig

"""Figures of an ablation study: harm per unit, and the channel study's curves.

Pure functions of a study's rows and meta (``netlens.analyzers.ablation``): the harm axis is
named for the metric's direction (``accuracy drop``, ``loss increase``) and says that higher is
worse, with the bootstrap interval of each paired difference as error bars.
"""

from __future__ import annotations

import textwrap
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .figures import new_figure

__all__ = ["channel_figure", "harm_axis_label", "harm_figure"]

Row = dict[str, Any]

_BLOCK, _DOWN = "#1b9e77", "#d95f02"


def harm_axis_label(meta: dict[str, Any]) -> str:
    """``accuracy drop (intact − ablated; higher = worse)`` or the ``increase`` form."""
    metric, harm = meta["metric"], meta["harm"]
    order = "intact − ablated" if harm == "drop" else "ablated − intact"
    return f"{metric} {harm} ({order}; higher = worse)"


def _harm_and_errors(rows: list[Row], meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Harm per row and its (lower, upper) error bar lengths, from the delta intervals."""
    sign = -1.0 if meta["harm"] == "drop" else 1.0
    harm = np.array([sign * r["delta"] for r in rows], dtype=float)
    ends = np.sort(sign * np.array([[r["delta_ci_low"], r["delta_ci_high"]] for r in rows]), 1)
    err = np.stack([harm - ends[:, 0], ends[:, 1] - harm]) if rows else np.zeros((2, 0))
    return harm, np.clip(np.nan_to_num(err), 0, None)


def _title(meta: dict[str, Any], width: float) -> str:
    """The figure title, wrapped to a figure ``width`` inches wide (~13 characters an inch)."""
    b = meta["baseline"]
    lines = [
        f"{meta.get('model', 'model')}: ablation mode '{meta['mode']}'; "
        f"{meta['metric_title']} ({meta['direction']})",
        f"intact model {b['value']:.3f} (95% CI {b['ci_low']:.3f}–{b['ci_high']:.3f}, n={b['n']})",
    ]
    return "\n".join(textwrap.fill(line, int(width * 13)) for line in lines)


def harm_figure(rows: list[Row], meta: dict[str, Any]) -> Figure:
    """Bar chart of the harm per ablated unit with bootstrap CIs; projection blocks hatched."""
    n = len(rows)
    width = max(6.0, 0.45 * n + 2)
    fig = new_figure(width, 4.2)
    ax = fig.add_subplot()
    harm, err = _harm_and_errors(rows, meta)
    down = [bool(r.get("downsample")) for r in rows]
    bars = ax.bar(
        np.arange(n),
        harm,
        color=[_DOWN if d else _BLOCK for d in down],
        yerr=err,
        capsize=3,
        edgecolor="black",
        linewidth=0.5,
    )
    for bar, d in zip(bars, down, strict=True):
        bar.set_hatch("//" if d else None)
    ax.set_xticks(np.arange(n), [r["unit"] for r in rows], rotation=45, ha="right", fontsize=8)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel(harm_axis_label(meta))
    ax.set_title(_title(meta, width), fontsize=9)
    if any(down):
        _legend(ax)
    return fig


def _legend(ax: Axes) -> None:
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor=_BLOCK, label="block"),
        Patch(facecolor=_DOWN, hatch="//", label="block with a projection shortcut"),
    ]
    ax.legend(handles=handles, fontsize=8, loc="best")


def channel_figure(rows: list[Row], arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Figure:
    """Per-channel harm (sorted), cumulative curves, and per-class curves (importance order)."""
    fig = new_figure(13.0, 4.0)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    unsorted = _harm_and_errors(rows, meta)[0]
    order = np.argsort(-unsorted, kind="stable")
    harm = unsorted[order]
    ax1.bar(np.arange(len(harm)), harm, width=1.0, color=_BLOCK)
    ax1.axhline(0, color="black", linewidth=0.8)
    ax1.set_xlabel("channels, most harmful to remove first")
    if 0 < len(harm) <= 32:  # few enough to name: each bar's channel number, not its rank
        names = [str(rows[i].get("channel", i)) for i in order]
        ax1.set_xticks(np.arange(len(harm)), names, fontsize=8 if len(harm) <= 16 else 6)
    else:
        ax1.set_xlabel("channels (by rank), most harmful to remove first")
    ax1.set_ylabel(harm_axis_label(meta))
    ax1.set_title(f"single channels of {meta['units'][0]}", fontsize=9)
    if "curve_k" in arrays:
        _curves(ax2, arrays, meta)
        _class_curves(ax3, arrays, meta)
    fig.suptitle(_title(meta, 13.0), fontsize=9)
    return fig


def _curves(ax: Axes, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    k = arrays["curve_k"]
    ax.plot(k, arrays["curve_importance"], "o-", ms=3, label="most important first")
    ax.plot(k, arrays["curve_random"], "s-", ms=3, label="random order")
    ax.axhline(meta["baseline"]["value"], color="gray", linestyle=":", label="intact")
    ax.set_xlabel("channels removed")
    ax.set_ylabel(f"{meta['metric']} ({meta['direction']})")
    ax.set_title("cumulative ablation", fontsize=9)
    ax.legend(fontsize=8)


def _class_curves(ax: Axes, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    per_class = arrays.get("curve_importance_classes")
    if per_class is None:
        return
    k = arrays["curve_k"]
    names = meta.get("classes") or [str(i) for i in range(per_class.shape[1])]
    fall = np.nan_to_num(per_class[0] - per_class[-1], nan=-np.inf)
    seen = np.flatnonzero(~np.isnan(per_class).all(0))  # classes with images (NaN: none)
    shown = seen[np.argsort(-fall[seen], kind="stable")][:12]  # those that fall most
    for c in sorted(shown.tolist()):
        name = names[c] if c < len(names) else c  # data named fewer classes than outputs
        ax.plot(k, per_class[:, c], linewidth=1, label=str(name)[:12])
    ax.set_xlabel("channels removed (most important first)")
    ax.set_ylabel(meta["per_class"])
    extra = f" ({len(shown)} of {len(seen)} that fall most)" if len(seen) > 12 else ""
    what = "label" if meta.get("task") == "multilabel" else "class"
    ax.set_title(f"per {what}{extra}", fontsize=9)
    ax.legend(fontsize=7, ncol=2, loc="lower left", framealpha=0.6)

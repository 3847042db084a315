"""Figures for ``evaluate`` and ``sanity``: pure functions from numpy arrays to a Figure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .figures import new_figure, panels

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["curves_figure", "sanity_curve_figure", "sanity_strip_figure", "scores_figure"]

_XLABEL = {
    "deletion": "fraction of pixels deleted",
    "insertion": "fraction of pixels inserted",
    "road-morf": "fraction removed (most relevant first)",
    "road-lerf": "fraction removed (least relevant first)",
}


def curves_figure(
    curves: dict[str, dict[str, np.ndarray]],
    xs: dict[str, np.ndarray],
    baselines: dict[str, np.ndarray],
) -> Figure:
    """One panel per curve metric: the mean curve of each method and of the random order.

    Args:
        curves: metric → method → N×K per-image curves.
        xs: metric → the K x positions.
        baselines: metric → N×K random-order curves.
    """
    names = list(curves)
    fig, axes = panels(len(names), 2, 4.6, 3.4)
    for ax, metric in zip(axes, names, strict=True):
        x = xs[metric]
        for method, c in curves[metric].items():
            ax.plot(x, c.mean(axis=0), lw=2, label=method)
        if metric in baselines:
            ax.plot(x, baselines[metric].mean(axis=0), "k--", lw=1.5, label="random order")
        ax.set_title(metric)
        ax.set_xlabel(_XLABEL.get(metric, "fraction"))
        ax.set_ylabel("target probability")
        ax.set_ylim(0, 1.02)
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def scores_figure(rows: list[dict]) -> Figure:
    """One panel per metric: mean ± CI per method, the baseline as a dashed line."""
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    fig, axes = panels(len(metrics), 3, 3.4, 3.2)
    for ax, metric in zip(axes, metrics, strict=True):
        sub = [r for r in rows if r["metric"] == metric]
        pos = np.arange(len(sub))
        mean = np.array([r["mean"] for r in sub])
        err = np.array([[r["mean"] - r["ci_low"], r["ci_high"] - r["mean"]] for r in sub]).T
        ax.bar(pos, mean, yerr=err, color="tab:blue", alpha=0.8, capsize=4)
        base = [r.get("baseline") for r in sub if r.get("baseline") is not None]
        if base:
            ax.axhline(
                float(np.mean(base)),
                color="k",
                ls="--",
                lw=1.2,
                label=sub[0].get("baseline_kind", "baseline"),
            )
            ax.legend(fontsize=8)
        ax.set_xticks(pos, [r["method"] for r in sub], rotation=30, ha="right")
        arrow = "↑" if sub[0].get("better") == "higher" else "↓"
        ax.set_title(f"{metric} ({arrow} better)")
        ax.grid(axis="y", alpha=0.3)
    return fig


def _pick_steps(n_steps: int, max_cols: int) -> list[int]:
    """Step indices to show: all when few, else evenly spaced, always the first and last."""
    if n_steps <= max_cols:
        return list(range(n_steps))
    return sorted({int(round(v)) for v in np.linspace(0, n_steps - 1, max_cols)})


def sanity_strip_figure(
    images: Sequence[np.ndarray],
    maps: np.ndarray,
    steps: Sequence[str],
    title: str,
    max_cols: int = 9,
) -> Figure:
    """The picture strip of Adebayo et al.: rows are images, columns randomisation steps.

    Args:
        images: H×W×3 uint8 originals, one per row.
        maps: (S+1)×N×H×W heatmaps: the trained model's first, then after each step.
        steps: the S block names, top first (each column randomises that block and those above).
    """
    cols = [0] + [k + 1 for k in _pick_steps(len(steps), max_cols - 1)]
    n = min(len(images), maps.shape[1], 4)
    fig = new_figure(1.35 * (len(cols) + 1), 1.45 * n + 0.6)
    axes = fig.subplots(n, len(cols) + 1, squeeze=False)
    for r in range(n):
        axes[r, 0].imshow(images[r])
        for c, k in enumerate(cols, start=1):
            axes[r, c].imshow(maps[k, r], cmap="inferno", vmin=0, vmax=1)
            if r == 0:
                label = "trained" if k == 0 else f"→ {steps[k - 1]}"
                axes[r, c].set_title(label, fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("image", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def sanity_curve_figure(
    series: dict[str, dict[str, np.ndarray]], steps: Sequence[str], threshold: float
) -> Figure:
    """Mean Spearman and SSIM against the trained model's maps, per step and method.

    ``series``: method → {"spearman": S×N, "ssim": S×N}.
    """
    fig = new_figure(max(5.0, 0.55 * len(steps) + 2.5), 3.6)
    ax = fig.subplots()
    x = np.arange(len(steps) + 1)
    for k, (method, s) in enumerate(series.items()):
        colour = f"C{k}"
        for key, style in (("spearman", "-o"), ("ssim", "--s")):
            y = np.r_[1.0, s[key].mean(axis=1)]
            ax.plot(x, y, style, color=colour, ms=4, label=f"{method} {key}")
    ax.axhline(threshold, color="grey", lw=1, ls=":", label=f"verdict threshold {threshold:g}")
    ax.set_xticks(x, ["trained", *steps], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("similarity to the trained model's maps")
    ax.set_xlabel("randomised down to (cascading from the logits)")
    low = min(float(np.mean(s[k], axis=1).min()) for s in series.values() for k in s)
    ax.set_ylim(min(-0.2, low - 0.05), 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig

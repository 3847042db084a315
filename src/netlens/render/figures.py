"""Matplotlib figures without pyplot's global state."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(width: float = 6.0, height: float = 4.0, dpi: int = 100) -> Figure:
    """A Figure with an Agg canvas attached (renders headless, touches no global state)."""
    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write the figure as a PNG file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(figure_png(fig))
    return path


def figure_array(fig: Figure) -> np.ndarray:
    """The rendered figure as an H×W×3 uint8 array."""
    canvas = fig.canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def grid_shape(n: int, max_cols: int = 8) -> tuple[int, int]:
    """Rows and columns for ``n`` tiles, as square as possible up to ``max_cols`` columns."""
    cols = min(max_cols, max(1, int(np.ceil(np.sqrt(n)))))
    return int(np.ceil(n / cols)), cols


def panels(n: int, max_cols: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    """A figure of ``n`` panels of ``width``×``height`` inches, in rows; unused axes hidden."""
    rows, cols = grid_shape(n, max_cols)
    fig = new_figure(width * cols, height * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_axis_off()
    return fig, axes[:n]

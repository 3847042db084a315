"""Tile grids: many small images (kernels, feature maps, image patches) in one labelled figure.

The grid is one mosaic array drawn in a single axes (fast for hundreds of tiles, and square
pixels by construction), with each tile's label written just above it. Everything here is pure:
arrays in, arrays or figures out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .figures import grid_shape, new_figure

__all__ = [
    "Grid",
    "crop_patches",
    "grid_figure",
    "mark_patches",
    "mosaic",
    "normalize_tiles",
    "fit_map",
    "overlay_tiles",
    "tile_origins",
]


@dataclass(frozen=True)
class Grid:
    """The mosaic drawn in a grid figure and where each tile sits in it."""

    array: np.ndarray
    origins: list[tuple[int, int]]
    tile_hw: tuple[int, int]

    def tile(self, i: int) -> np.ndarray:
        """Tile ``i`` as drawn (cut back out of the mosaic)."""
        (r, c), (h, w) = self.origins[i], self.tile_hw
        return self.array[r : r + h, c : c + w]


def normalize_tiles(
    tiles: np.ndarray, *, mode: str = "tile", symmetric: bool = False
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Scale tiles (N×h×w or N×h×w×3) to [0, 1] for display.

    Args:
        tiles: the raw values.
        mode: ``"tile"`` (each tile on its own min..max) or ``"joint"`` (one scale for all).
        symmetric: scale ``-m..m`` (m the largest magnitude) so 0 maps to 0.5; for signed
            weights shown with a diverging colour map.

    Returns:
        The scaled tiles (float32) and, for ``"joint"``, the (low, high) raw values mapped to
        0 and 1 (what a colour bar should show); None for per-tile scales.
    """
    if mode not in ("tile", "joint"):
        raise ValueError(f"normalisation must be 'tile' or 'joint', not {mode!r}")
    t = np.asarray(tiles, dtype=np.float64)
    axes = tuple(range(1, t.ndim)) if mode == "tile" else tuple(range(t.ndim))
    if symmetric:
        m = np.abs(t).max(axis=axes, keepdims=True)
        lo, hi = -m, m
    else:
        lo, hi = t.min(axis=axes, keepdims=True), t.max(axis=axes, keepdims=True)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    out = ((t - lo) / span).astype(np.float32)
    if mode == "joint":
        return out, (float(lo.ravel()[0]), float(hi.ravel()[0]))
    return out, None


def tile_origins(n: int, tile_hw: tuple[int, int], cols: int, pad: int) -> list[tuple[int, int]]:
    """Top-left (row, col) pixel of each of ``n`` tiles in the mosaic made by :func:`mosaic`."""
    h, w = tile_hw
    return [(pad + (i // cols) * (h + pad), pad + (i % cols) * (w + pad)) for i in range(n)]


def mosaic(
    tiles: np.ndarray, *, cols: int | None = None, pad: int = 1, fill: float = np.nan
) -> np.ndarray:
    """Lay N tiles (N×h×w or N×h×w×3) out row by row with ``pad`` pixels between them.

    Gaps are ``fill`` (NaN by default, drawn as the background colour).
    """
    t = np.asarray(tiles, dtype=np.float32)
    n, h, w = t.shape[:3]
    if cols is None:
        cols = grid_shape(n, max_cols=max(8, int(np.ceil(np.sqrt(n)))))[1]
    rows = int(np.ceil(n / cols))
    shape = (pad + rows * (h + pad), pad + cols * (w + pad), *t.shape[3:])
    out = np.full(shape, fill, dtype=np.float32)
    for i, (r, c) in enumerate(tile_origins(n, (h, w), cols, pad)):
        out[r : r + h, c : c + w] = t[i]
    return out


def grid_figure(
    tiles: np.ndarray,
    labels: Sequence[str],
    *,
    title: str = "",
    cmap: str = "viridis",
    cols: int | None = None,
    colorbar: tuple[float, float] | None = None,
    colorbar_label: str = "",
    tile_inches: float = 0.9,
    reference: np.ndarray | None = None,
    reference_label: str = "input",
) -> tuple[Figure, Grid]:
    """A labelled grid of tiles already scaled to [0, 1].

    Args:
        tiles: N×h×w (drawn with ``cmap``) or N×h×w×3 (RGB) values in [0, 1].
        labels: one short label per tile, written above it.
        title: figure title.
        cmap: colour map for single-channel tiles.
        cols: tiles per row (as square as possible by default).
        colorbar: (low, high) raw values that 0 and 1 stand for; a colour bar is drawn only then.
        colorbar_label: what the colour bar measures.
        tile_inches: size of one tile on the page.
        reference: an H×W×3 uint8 image drawn left of the grid (e.g. the input).
        reference_label: its title.

    Returns:
        The figure and the :class:`Grid` drawn in it (what a test can check pixel by pixel).
    """
    t = np.asarray(tiles, dtype=np.float32)
    n, h, w = t.shape[:3]
    if cols is None:
        cols = grid_shape(n, max_cols=max(8, int(np.ceil(np.sqrt(n * w / h)))))[1]
    cols = max(1, min(cols, n))
    pad = max(1, round(0.3 * max(h, w)))  # room for the label above each tile
    grid = mosaic(t, cols=cols, pad=pad)
    fig, ax = _grid_axes(
        grid.shape[:2],
        tile_inches / max(h, w),
        title,
        colorbar,
        reference,
        reference_label,
        tile_inches,
    )
    ax.set_facecolor("#f0f0f0")
    if t.ndim == 4:
        im = ax.imshow(np.nan_to_num(grid, nan=0.94), interpolation="nearest")
    else:
        shown = np.ma.masked_invalid(grid)
        im = ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    origins = tile_origins(n, (h, w), cols, pad)
    size = max(5.0, min(9.0, 72 * tile_inches * 0.22))
    for (r, c), label in zip(origins, labels, strict=False):
        ax.text(c + w / 2 - 0.5, r - 0.6, label, ha="center", va="bottom", fontsize=size)
    if colorbar is not None and t.ndim == 3:
        rows = int(np.ceil(n / cols))
        _colorbar(fig, ax, im, colorbar, colorbar_label, shrink=min(1.0, 3.0 / rows + 0.4))
    return fig, Grid(grid, origins, (h, w))


def _grid_axes(
    grid_hw: tuple[int, ...],
    scale: float,
    title: str,
    colorbar: tuple[float, float] | None,
    reference: np.ndarray | None,
    reference_label: str,
    tile_inches: float,
) -> tuple[Figure, Any]:
    """A figure sized to the grid (and the reference image left of it); the grid's axes."""
    gh, gw = grid_hw[:2]
    longest = max((len(line) for line in title.splitlines()), default=0)
    width = max(3.0, gw * scale + (1.0 if colorbar else 0.2), 0.075 * longest + 0.3)
    height = max(1.5, gh * scale + 0.6)
    ref_inches = min(2.5, max(1.2, 2 * tile_inches), height - 0.6)
    if reference is not None:
        width += ref_inches + 0.2
    fig = new_figure(width, height, dpi=100)
    if reference is None:
        ax = fig.add_subplot()
        if title:
            ax.set_title(title, fontsize=10)
        return fig, ax
    spec = fig.add_gridspec(1, 2, width_ratios=[ref_inches, width - ref_inches])
    rax, ax = fig.add_subplot(spec[0]), fig.add_subplot(spec[1])
    rax.imshow(reference, interpolation="nearest")
    rax.set_title(reference_label, fontsize=9)
    rax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return fig, ax


def _colorbar(
    fig: Figure, ax: Any, im: Any, span: tuple[float, float], label: str, shrink: float
) -> None:
    """A colour bar whose ticks read the raw values that 0..1 stand for."""
    lo, hi = span
    cb = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, shrink=shrink)
    ticks = np.linspace(0, 1, 5)
    cb.set_ticks(ticks)
    cb.set_ticklabels([f"{lo + (hi - lo) * v:.3g}" for v in ticks])
    if label:
        cb.set_label(label)


def overlay_tiles(
    maps: np.ndarray,
    image: np.ndarray,
    *,
    alpha: float = 0.5,
    stride: tuple[int, int] | list[int] | None = None,
) -> np.ndarray:
    """Blend K maps in [0, 1] (K×h×w) over an H×W×3 uint8 image: K×H×W×3 in [0, 1].

    Each map is resized to the image (bilinear) and coloured with the jet map, the usual CAM
    look. With ``stride`` (a ViT patch grid's, from ``meta["strides"]`` of a features result)
    cell (i, j) is the patch at stride × (i, j) from the top left: the map is resized to the
    grid's own size (h·stride × w·stride, the padded input of a dynamically padded ViT) and
    cut to the image; pixels no patch covers (a grid that stops short) are left uncoloured.
    """
    import cv2

    h, w = image.shape[:2]
    base = image.astype(np.float32) / 255.0
    out = np.empty((len(maps), h, w, 3), dtype=np.float32)
    for i, m in enumerate(np.asarray(maps, dtype=np.float32)):
        big, covered = fit_map(m, (h, w), stride)
        heat = cv2.applyColorMap(np.uint8(np.clip(big, 0, 1) * 255), cv2.COLORMAP_JET)
        heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        out[i] = np.where(covered[..., None], (1 - alpha) * base + alpha * heat, base)
    return out


def fit_map(
    m: np.ndarray, size: tuple[int, int], stride: tuple[int, int] | list[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A map (h×w) over an image of ``size`` (H, W), bilinear, and where it covers the image
    (H×W bools): stretched over the whole image, or with ``stride`` placed as a grid of
    patches of that stride from the top left (see :func:`overlay_tiles`)."""
    import cv2

    height, width = int(size[0]), int(size[1])
    m = np.nan_to_num(np.asarray(m, dtype=np.float32))
    if stride is None:
        big = cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR)
        return big, np.ones((height, width), dtype=bool)
    ph, pw = m.shape[0] * int(stride[0]), m.shape[1] * int(stride[1])
    grid = cv2.resize(m, (pw, ph), interpolation=cv2.INTER_LINEAR)
    big = np.zeros((height, width), dtype=np.float32)
    covered = np.zeros((height, width), dtype=bool)
    hh, ww = min(ph, height), min(pw, width)
    big[:hh, :ww] = grid[:hh, :ww]
    covered[:hh, :ww] = True
    return big, covered


def mark_patches(images: np.ndarray, boxes: np.ndarray, *, dim: float = 0.45) -> np.ndarray:
    """Images (M×H×W×3 uint8) with a box each (M×4: y0, x0, y1, x1, end-exclusive) shown:
    outside the box darkened, the box outlined in yellow. Returns M×H×W×3 floats in [0, 1]."""
    out = np.asarray(images, dtype=np.float32) / 255.0
    out = out.copy()
    for img, (y0, x0, y1, x1) in zip(out, np.asarray(boxes, dtype=int), strict=True):
        inside = img[y0:y1, x0:x1].copy()
        img *= dim
        img[y0:y1, x0:x1] = inside
        edge = np.array([1.0, 0.9, 0.0], dtype=np.float32)
        img[y0, x0:x1] = img[y1 - 1, x0:x1] = edge
        img[y0:y1, x0] = img[y0:y1, x1 - 1] = edge
    return out


def crop_patches(images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Cut each image's box (M×4: y0, x0, y1, x1) out at its true size, centred on a canvas of
    the largest box size (no resizing, so shapes keep their aspect): M×h×w×3 floats in [0, 1],
    NaN where a crop does not reach (drawn as the background)."""
    b = np.asarray(boxes, dtype=int)
    h = int((b[:, 2] - b[:, 0]).max())
    w = int((b[:, 3] - b[:, 1]).max())
    out = np.full((len(b), h, w, 3), np.nan, dtype=np.float32)
    for i, (img, (y0, x0, y1, x1)) in enumerate(zip(images, b, strict=True)):
        top, left = (h - (y1 - y0)) // 2, (w - (x1 - x0)) // 2
        out[i, top : top + y1 - y0, left : left + x1 - x0] = img[y0:y1, x0:x1] / 255.0
    return out

"""Heatmap overlays: a colormap blended over the original image at its original size.

Pure numpy/OpenCV functions: arrays in, arrays (or PNG files) out.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

__all__ = ["colorize", "display_scale", "overlay", "png_bytes", "write_png"]

_CMAPS = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "magma": cv2.COLORMAP_MAGMA,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "hot": cv2.COLORMAP_HOT,
}


def colorize(heat: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """An H×W map in [0, 1] as an H×W×3 uint8 RGB picture."""
    if cmap not in _CMAPS:
        raise ValueError(f"unknown colormap '{cmap}' (known: {', '.join(_CMAPS)})")
    u8 = (np.clip(np.nan_to_num(heat), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, _CMAPS[cmap]), cv2.COLOR_BGR2RGB)


def overlay(
    image: np.ndarray,
    heat: np.ndarray,
    *,
    alpha: float = 0.5,
    cmap: str = "jet",
    box: tuple[int, int, int, int] | None = None,
    min_side: int = 0,
    max_side: int = 0,
) -> np.ndarray:
    """Blend ``heat`` (any size, values in [0, 1]) over ``image`` (H×W×3 uint8).

    The map is resized to ``box`` (the part of the image the model saw; the whole image by
    default); outside the box the image is dimmed, as the model never saw it. ``min_side``:
    a smaller image is enlarged (whole pixels repeated) so the picture is readable on its own;
    ``max_side``: a larger one is shrunk, so a huge photo gives a picture of sensible size.
    """
    img = (
        image
        if image.ndim == 3 and image.shape[2] == 3
        else np.repeat(image.reshape(*image.shape[:2], 1)[:, :, :1], 3, axis=2)
    )
    h0, w0 = img.shape[:2]
    top, bottom, left, right = box or (0, h0, 0, w0)
    scale = display_scale((h0, w0), min_side, max_side)
    if scale != 1.0:
        size = (max(1, round(w0 * scale)), max(1, round(h0 * scale)))
        how = cv2.INTER_NEAREST if scale > 1 else cv2.INTER_AREA
        img = cv2.resize(np.ascontiguousarray(img), size, interpolation=how)
        h0, w0 = img.shape[:2]
        top, bottom = round(top * scale), min(h0, round(bottom * scale))
        left, right = round(left * scale), min(w0, round(right * scale))
    out = (img.astype(np.float32) * 0.35).astype(np.uint8)
    region = img[top:bottom, left:right]
    hmap = cv2.resize(
        heat.astype(np.float32), (right - left, bottom - top), interpolation=cv2.INTER_LINEAR
    )
    color = colorize(hmap, cmap).astype(np.float32)
    blend = (1.0 - alpha) * region.astype(np.float32) + alpha * color
    out[top:bottom, left:right] = np.clip(blend + 0.5, 0, 255).astype(np.uint8)
    return out


def display_scale(hw: tuple[int, int], min_side: int = 0, max_side: int = 0) -> float:
    """How much to scale an H×W picture: whole times up to ``min_side``, down to ``max_side``."""
    short, long = min(hw), max(hw)
    if min_side and short < min_side:
        return float(-(-min_side // short))  # a whole factor: pixels stay square blocks
    if max_side and long > max_side:
        return max_side / long
    return 1.0


def png_bytes(image: np.ndarray) -> bytes:
    """An H×W×3 RGB (or H×W gray) uint8 array encoded as PNG."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise OSError("could not encode an image as PNG")
    return buf.tobytes()


def write_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an H×W×3 RGB uint8 array as a PNG file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(image))
    return path

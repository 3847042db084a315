"""Mask PNGs as people save them: object pixels non-zero, at any depth and in any colour.

``evaluate``'s folder masks and ``region:NAME@mask.png`` targets read them alike: 8- or 16-bit
gray (a label image whose object is 1, which an 8-bit read scales to 0), RGB (any channel
non-zero: a red drawing), or a drawing in the alpha channel alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["read_mask", "same_shape_up_to_scale"]


def read_mask(path: str | Path) -> np.ndarray | None:
    """The mask at ``path`` as H×W bool (True = object); None when it cannot be read."""
    import cv2

    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None:
        return None
    if m.ndim == 3:
        colour = m[..., :3]
        m = colour.any(axis=2) if m.shape[2] < 4 or colour.any() else m[..., 3]
    return np.asarray(m) > 0


def same_shape_up_to_scale(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Whether H×W shapes ``a`` and ``b`` are one picture at two scales (to a pixel's rounding)."""
    (ah, aw), (bh, bw) = a[:2], b[:2]
    return abs(ah * bw - aw * bh) <= max(ah, aw, bh, bw)

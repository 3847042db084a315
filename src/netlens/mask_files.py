"""Mask PNGs as people save them: object pixels non-zero, at any depth and in any colour.

``evaluate``'s folder masks and ``region:NAME@mask.png`` targets read them alike: 8- or 16-bit
gray (a label image whose object is 1, which an 8-bit read scales to 0), RGB (any channel
non-zero: a red drawing), a drawing on a transparent canvas (only what is visible: alpha
non-zero and colour non-zero, whatever colour the transparent pixels hide), or a drawing in the
alpha channel alone. A mask file is read as an image file is: its size from its header within
the pixel limit first (:func:`netlens.image_decode.pixel_limit`), then turned upright by its EXIF
orientation, as its photo is.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["object_pixels", "read_mask", "same_shape_up_to_scale"]


def read_mask(path: str | Path) -> np.ndarray | None:
    """The mask at ``path`` as H×W bool (True = object); None when there is no file at
    ``path``. A file that is there but cannot be read (over the pixel limit, damaged, not an
    image) raises :class:`~netlens.errors.ImageError` with one line."""
    from .image_decode import read_stored

    p = Path(path)
    if not os.path.exists(p):  # missing (or a dangling link): the caller says whose mask
        return None
    return object_pixels(read_stored(p))


def object_pixels(m: np.ndarray) -> np.ndarray:
    """The object pixels (True) of a mask's decoded values: H×W gray, or H×W×C colour with
    an alpha channel last when C is 2 or 4.

    With alpha, a pixel is object only where it is visible (alpha > 0) and its colour is
    non-zero; colour that is zero everywhere means the drawing is in the alpha channel alone.

    Example:
        >>> rgba = np.zeros((1, 3, 4), np.uint8)
        >>> rgba[0, :2, :3] = 255  # white colour under both first pixels
        >>> rgba[0, 1, 3] = 255  # only the second one visible
        >>> object_pixels(rgba).tolist()
        [[False, True, False]]
    """
    if m.ndim == 2:
        return m > 0
    if m.shape[2] in (2, 4):
        colour, alpha = m[..., :-1].any(axis=2), m[..., -1] > 0
        return colour & alpha if colour.any() else alpha
    return m.any(axis=2)


def same_shape_up_to_scale(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Whether H×W shapes ``a`` and ``b`` are one picture at two scales (to a pixel's rounding)."""
    (ah, aw), (bh, bw) = a[:2], b[:2]
    return abs(ah * bw - aw * bh) <= max(ah, aw, bh, bw)

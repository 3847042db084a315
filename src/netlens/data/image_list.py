"""The images of an ``(images, labels)`` pair given as a list of photos: file paths, PIL images
or pixel arrays of mixed sizes, read and preprocessed as ``lens.cam`` reads them
(:func:`netlens.images.load_batch`: EXIF orientation, 16-bit and alpha handling, the pixel
limit), into the one preprocessed N×C×H×W tensor the pair then carries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, ImageError
from ..images import _is_pil, load_batch
from ..preprocess import SizeFromFirstImage

__all__ = ["is_photo_list", "photo_list_tensor"]


def is_photo_list(images: Any) -> bool:
    """A list or tuple of photos that is not one numeric array: a path or a PIL image among
    them, or arrays that do not stack (mixed sizes)."""
    if not isinstance(images, (list, tuple)) or not images:
        return False
    if any(isinstance(v, (str, Path)) or _is_pil(v) for v in images):
        return True
    try:
        arr = np.asarray(images)
    except (ValueError, TypeError, RuntimeError):  # ragged: photos of several sizes
        return True
    return arr.dtype.kind not in "biuf"


def photo_list_tensor(images: list[Any] | tuple[Any, ...], preprocess: Any) -> torch.Tensor:
    """The photos read and preprocessed as ``lens.cam`` does, stacked (one line naming the
    first photo that cannot be read, or two that come out at different sizes)."""
    if preprocess is None:
        raise DataError(
            "a list of photos in an (images, labels) pair needs the model's preprocessing: "
            "pass the pair to lens.evaluate, or give preprocess="
        )
    for i, v in enumerate(images):
        if not _photo_like(v):
            raise DataError(
                f"image {i} of the (images, labels) pair is a {type(v).__name__}: give file "
                "paths, PIL images or pixel arrays (H×W or H×W×C)"
            )
    spec = preprocess
    if getattr(spec, "size", 0) is None and getattr(spec, "function", None) is None:
        spec = SizeFromFirstImage(spec)  # as lens.cam: the first photo sets the size
    try:
        batch = load_batch(list(images), spec)
    except ImageError as exc:  # none could be read: the first one's reason
        raise DataError(f"image 0 of the (images, labels) pair: {exc}") from None
    if batch.errors:
        kept = set(batch.kept or ())
        first = next(i for i in range(batch.given) if i not in kept)
        raise DataError(
            f"image {first} of the (images, labels) pair: {batch.errors[0]} "
            f"({len(batch.errors)} of {batch.given} could not be read)"
        )
    return batch.tensor


def _photo_like(v: Any) -> bool:
    """A path, a PIL image, a tensor or an array of numbers (what ``load_batch`` can read)."""
    if isinstance(v, (str, Path, torch.Tensor)) or _is_pil(v):
        return True
    try:
        return np.asarray(v).dtype.kind in "biuf"
    except (ValueError, TypeError, RuntimeError):
        return False

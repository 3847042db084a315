"""Localisation metrics over ground-truth masks: the pointing game and energy inside the mask.

Pointing game (Zhang et al. 2016, "Top-down neural attention by excitation backprop"): a hit
when the heatmap's maximum lies inside the object mask, or within ``tolerance`` pixels of it
(the paper uses 15 px at 224 px input). A maximum shared by several pixels (the flat top of a
coarse CAM upsampled to the input: a 16×16 px plateau for a 4×4 map at 64 px) scores the share
of those pixels that hit: the expected hit of a peak picked among them at random, so the
plateau of a map that knows nothing about the object scores the chance level, not a hit
wherever the plateau touches the mask. A unique maximum still scores 0 or 1.
Energy in the mask: the share of the heatmap's total mass that falls inside the mask (the
"energy-based pointing game" of Score-CAM).

The chance level of both is the mean fraction of the image the mask covers (for the pointing
game with a tolerance, the mask grown by it): a uniformly random point lands there with that
probability, and a flat heatmap puts that share of its energy there.
An image whose mask is empty at the model's input (its object outside the crop) has nothing to
point at: it scores NaN on both, and summaries leave it out; so does a map holding NaN or
infinite values (what :func:`netlens.metrics.perturb.flat_maps` counts as flat).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np
import torch

from ..errors import DataError

__all__ = [
    "EnergyInMask",
    "PointingGame",
    "energy_in_mask",
    "grown",
    "grown_fraction",
    "mask_fraction",
    "pointing_game",
]


def _as_numpy(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().float().cpu().numpy()
    return np.asarray(a)


def _check(heatmaps: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
    if masks is None:
        raise DataError(
            "this metric needs ground-truth masks; use data that carries them "
            "(e.g. --data shapes, or a dataset with .mask(i))"
        )
    masks = _as_numpy(masks).astype(bool)
    if masks.shape != heatmaps.shape:
        raise DataError(f"masks {masks.shape} and heatmaps {heatmaps.shape} differ in shape")
    return masks


def mask_fraction(masks: Any) -> np.ndarray:
    """Per image, the fraction of pixels inside the mask (the chance level of both metrics);
    NaN for an empty mask, as both metrics give it."""
    m = _as_numpy(masks).astype(bool)
    frac = m.reshape(len(m), -1).mean(axis=1)
    return np.where(frac > 0, frac, np.nan)


def grown(mask: np.ndarray, tolerance: float) -> np.ndarray:
    """The pixels within ``tolerance`` px (Euclidean, from pixel centres) of an H×W mask:
    where a pointing-game peak is a hit. OpenCV's exact distance transform; a dilation by an
    ellipse-shaped kernel also takes in pixels 2.24 px away at tolerance 2, 15.3 at 15."""
    m = np.asarray(mask, bool)
    if tolerance <= 0 or not m.any():
        return m
    outside = np.ascontiguousarray(~m, dtype=np.uint8)
    dist = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return dist <= tolerance + 1e-6


def grown_fraction(masks: Any, tolerance: float) -> np.ndarray:
    """Per image, the share of pixels within ``tolerance`` of the mask: the pointing game's
    chance level (a uniformly random point is a hit there); NaN for an empty mask."""
    m = _as_numpy(masks).astype(bool)
    return mask_fraction(np.stack([grown(x, tolerance) for x in m])) if len(m) else np.empty(0)


def _empty(m: np.ndarray) -> np.ndarray:
    """Images whose mask holds no pixel (the object lies outside the model's input crop):
    they have nothing to point at, so they score NaN and summaries leave them out."""
    return ~m.reshape(len(m), -1).any(axis=1)


def pointing_game(heatmaps: Any, masks: Any, tolerance: int = 0) -> np.ndarray:
    """Per image, the pointing-game hit: 1.0 when the heatmap's maximum is within ``tolerance``
    px of the mask, else 0. A maximum tied over several pixels scores the share of them that
    are within ``tolerance`` of the mask (the expected hit of a peak picked uniformly at random
    among them), so a plateau does not hit wherever it touches the mask.

    NaN for an empty mask, and for a flat map: one that is all zero ("no evidence") or constant
    points nowhere, and one holding NaN or infinite values has no maximum to trust (both are
    what evaluate counts as flat maps and leaves out).

    Example:
        >>> pointing_game(h[None], m[None], tolerance=15)
        array([1.])
    """
    h = _as_numpy(heatmaps).astype(np.float64)
    m = _check(h, masks)
    hits = np.full(len(h), np.nan)
    for i in range(len(h)):
        if not np.isfinite(h[i]).all():
            continue
        peak = h[i] >= h[i].max()
        if not peak.all():
            hits[i] = float(grown(m[i], tolerance)[peak].mean())
    return np.where(_empty(m), np.nan, hits)


def energy_in_mask(heatmaps: Any, masks: Any) -> np.ndarray:
    """Per image, sum of the heatmap inside the mask over its total sum (NaN for an all-zero map
    or an empty mask).

    Heatmaps are used as given (netlens' CAMs are already non-negative and in [0, 1]);
    negative values are clipped to zero.
    """
    h = np.clip(_as_numpy(heatmaps).astype(np.float64), 0, None)
    m = _check(h, masks)
    total = h.reshape(len(h), -1).sum(axis=1)
    inside = (h * m).reshape(len(h), -1).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)
    return np.where(_empty(m), np.nan, share)


@dataclass(frozen=True)
class PointingGame:
    """Pointing-game hit rate (option tolerance: pixels of slack around the mask)."""

    name: ClassVar[str] = "pointing"
    needs_masks: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = True
    #: per-image scores are hits (0 or 1, a tied peak's share aside): a summary may take the
    #: Wilson interval (``mean_ci(..., proportion=True)``)
    proportion: ClassVar[bool] = True

    def cost(self, n_images: int, **opts: Any) -> int:
        """Model forward passes this metric adds (none: it only reads heatmaps)."""
        return 0

    def __call__(
        self,
        model: Any,
        x: Any,
        heatmaps: Any,
        targets: Any,
        masks: Any = None,
        tolerance: int = 0,
        **opts: Any,
    ) -> dict[str, np.ndarray]:
        score = pointing_game(heatmaps, masks, tolerance=int(tolerance))
        return {"score": score, "baseline": grown_fraction(masks, int(tolerance))}


@dataclass(frozen=True)
class EnergyInMask:
    """Share of heatmap energy inside the ground-truth mask."""

    name: ClassVar[str] = "energy"
    needs_masks: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = True

    def cost(self, n_images: int, **opts: Any) -> int:
        """Model forward passes this metric adds (none)."""
        return 0

    def __call__(
        self, model: Any, x: Any, heatmaps: Any, targets: Any, masks: Any = None, **opts: Any
    ) -> dict[str, np.ndarray]:
        return {"score": energy_in_mask(heatmaps, masks), "baseline": mask_fraction(masks)}

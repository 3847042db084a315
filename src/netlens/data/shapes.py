"""Generated shapes: coloured shapes on textured clutter, with the object's ground-truth mask.

netlens' own dataset, drawn with OpenCV: one shape per image (circle, square, triangle, star or
cross) at a random position, scale, colour and rotation, on a background of blurred colour noise,
lines and specks. The mask says which pixels belong to the object, so a heatmap can be scored on
whether it hits it. Generation is deterministic given the seed; each split has its own seed.

Example:
    >>> images, labels, masks, classes = generate(8, size=64, seed=0)
    >>> images.shape, masks.shape, classes[labels[0]]
    ((8, 64, 64, 3), (8, 64, 64), 'star')
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import DataError
from .resolve import ArrayDataset

__all__ = ["CLASSES", "SPLITS", "generate", "shapes_dataset", "write_folder"]

CLASSES = ("circle", "square", "triangle", "star", "cross")
# split → (seed, number of images); distinct seeds so no image is shared between splits
SPLITS = {"train": (1, 12000), "val": (2, 1000), "test": (3, 2000)}


def _outline(kind: str) -> np.ndarray:
    """The shape's polygon in unit coordinates (radius 1, centred on 0)."""
    if kind == "square":
        t = np.deg2rad([45, 135, 225, 315])
        return np.stack([np.cos(t), np.sin(t)], 1)
    if kind == "triangle":
        t = np.deg2rad([90, 210, 330])
        return np.stack([np.cos(t), np.sin(t)], 1) * 1.1
    if kind == "star":
        t = np.deg2rad(np.arange(10) * 36 + 90)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([np.cos(t) * r, np.sin(t) * r], 1) * 1.1
    if kind == "cross":
        a = 0.32
        pts = [
            (a, 1),
            (a, a),
            (1, a),
            (1, -a),
            (a, -a),
            (a, -1),
            (-a, -1),
            (-a, -a),
            (-1, -a),
            (-1, a),
            (-a, a),
            (-a, 1),
        ]
        return np.asarray(pts, dtype=np.float64)
    raise DataError(f"unknown shape '{kind}' (known: {', '.join(CLASSES)})")


def _clutter(rng: np.random.Generator, size: int) -> np.ndarray:
    """A muted, textured background: smooth colour noise, fine grain, lines and specks."""
    base = rng.uniform(60, 170, 3)
    coarse = rng.normal(0, 28, (max(2, size // 8), max(2, size // 8), 3))
    img = base + cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 7, (size, size, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(3, 8))):
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        colour = (base + rng.normal(0, 45, 3)).clip(0, 255)
        cv2.line(
            img,
            tuple(int(v) for v in p1),
            tuple(int(v) for v in p2),
            tuple(float(c) for c in colour),
            int(rng.integers(1, 3)),
            cv2.LINE_AA,
        )
    for _ in range(int(rng.integers(4, 12))):
        c = rng.integers(0, size, 2)
        colour = (base + rng.normal(0, 45, 3)).clip(0, 255)
        cv2.circle(
            img,
            tuple(int(v) for v in c),
            int(rng.integers(1, 3)),
            tuple(float(v) for v in colour),
            -1,
            cv2.LINE_AA,
        )
    return img


def _colour(rng: np.random.Generator) -> tuple[float, float, float]:
    """A saturated, bright RGB colour (so the object stands out from the muted clutter)."""
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(170, 256), rng.integers(170, 256)]]])
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return tuple(float(v) for v in rgb)  # type: ignore[return-value]


def _draw(img: np.ndarray, mask: np.ndarray, kind: str, rng: np.random.Generator) -> None:
    size = img.shape[0]
    r = rng.uniform(0.15, 0.3) * size
    margin = r * 1.15 + 1
    cx, cy = rng.uniform(margin, size - margin, 2)
    colour = _colour(rng)
    shift = 4  # sub-pixel precision for cv2's fixed-point drawing
    if kind == "circle":
        centre = (round(cx * 2**shift), round(cy * 2**shift))
        cv2.circle(img, centre, round(r * 2**shift), colour, -1, cv2.LINE_AA, shift)
        cv2.circle(mask, centre, round(r * 2**shift), 1, -1, cv2.LINE_8, shift)
        return
    t = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    pts = _outline(kind) @ rot.T * r + (cx, cy)
    poly = [np.round(pts * 2**shift).astype(np.int32)]
    cv2.fillPoly(img, poly, colour, cv2.LINE_AA, shift)
    cv2.fillPoly(mask, poly, 1, cv2.LINE_8, shift)


def generate(
    n: int, size: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """``n`` images of one shape each on clutter (classes balanced, order shuffled).

    Returns:
        images (n×size×size×3 uint8 RGB), labels (n int64), masks (n×size×size bool, the object's
        pixels) and the class names.
    """
    if n < 0 or size < 16:
        raise DataError(f"generate needs n >= 0 and size >= 16 (got n={n}, size={size})")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i, k in enumerate(labels):
        images[i] = _clutter(rng, size)
        _draw(images[i], masks[i], CLASSES[k], rng)
        grain = rng.normal(0, 4, (size, size, 3))
        images[i] = np.clip(images[i] + grain, 0, 255).astype(np.uint8)
    return images, labels, masks.astype(bool), list(CLASSES)


def shapes_dataset(
    split: str = "test", size: int = 64, n: int | None = None, seed: int | None = None
) -> ArrayDataset:
    """The ``shapes`` dataset: ``train`` (12,000), ``val`` (1,000) or ``test`` (2,000) images."""
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}' for shapes (known: {', '.join(SPLITS)})")
    split_seed, split_n = SPLITS[split]
    images, labels, masks, classes = generate(
        split_n if n is None else n, size, split_seed if seed is None else seed
    )
    return ArrayDataset(images, labels, classes, masks=masks)


def write_folder(
    root: str | Path,
    n: int = 500,
    size: int = 64,
    seed: int = 0,
    masks_root: str | Path | None = None,
) -> tuple[Path, Path]:
    """Write generated shapes as ``root/<class>/<i>.png``, masks as ``masks_root/<class>/<i>.png``.

    The image tree is a class-subfolder dataset that ``--data root`` (and any image-folder tool)
    reads; the masks (0/255 PNGs with the same names) go to a sibling folder, ``<root>_masks`` by
    default, so they are not taken for a class.
    """
    root = Path(root)
    masks_root = Path(masks_root) if masks_root else root.with_name(root.name + "_masks")
    images, labels, masks, classes = generate(n, size, seed)
    for i, (img, k, m) in enumerate(zip(images, labels, masks, strict=True)):
        for sub, arr in (
            (root / classes[k], cv2.cvtColor(img, cv2.COLOR_RGB2BGR)),
            (masks_root / classes[k], m.astype(np.uint8) * 255),
        ):
            sub.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(sub / f"{i:05d}.png"), arr)
    return root, masks_root

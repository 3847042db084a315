"""Generated shapes: determinism, balance, masks that match the drawn object, the folder writer."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from netlens.data import as_dataset
from netlens.data.shapes import CLASSES, SPLITS, generate, shapes_dataset, write_folder
from netlens.errors import DataError


def test_generate_is_deterministic_and_balanced() -> None:
    a = generate(40, size=48, seed=5)
    b = generate(40, size=48, seed=5)
    c = generate(40, size=48, seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a[:3], b[:3], strict=True))
    assert not np.array_equal(a[0], c[0])
    images, labels, masks, classes = a
    assert images.shape == (40, 48, 48, 3) and images.dtype == np.uint8
    assert masks.shape == (40, 48, 48) and masks.dtype == bool
    assert classes == list(CLASSES)
    assert np.bincount(labels, minlength=len(CLASSES)).tolist() == [8] * len(CLASSES)


def test_masks_cover_one_object_of_plausible_size() -> None:
    images, labels, masks, _ = generate(50, size=64, seed=1)
    area = masks.reshape(50, -1).mean(1)
    assert area.min() > 0.015 and area.max() < 0.45
    for m in masks:
        n, _ = cv2.connectedComponents(m.astype(np.uint8))
        assert n - 1 == 1  # exactly one object
    # the object colour differs from the clutter around it: inside vs. a ring just outside
    for img, m in zip(images[:10], masks[:10], strict=True):
        ring = cv2.dilate(m.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~m
        inner = cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        diff = np.abs(img[inner].mean(0) - img[ring].mean(0)).max()
        assert diff > 20


def test_circles_are_round_and_crosses_are_not_convex() -> None:
    _, labels, masks, classes = generate(60, size=64, seed=2)
    for k, m in zip(labels, masks, strict=True):
        cnts, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        area = cv2.contourArea(cnts[0])
        hull = cv2.contourArea(cv2.convexHull(cnts[0]))
        solidity = area / hull
        if classes[k] in ("circle", "square", "triangle"):
            assert solidity > 0.88
        else:
            assert solidity < 0.8  # star, cross


def test_splits_use_different_seeds() -> None:
    seeds = [seed for seed, _ in SPLITS.values()]
    assert len(set(seeds)) == len(seeds)
    ds = shapes_dataset("test", n=10)
    assert len(ds) == 10 and ds.mask(0).shape == (64, 64)
    x, y = ds[0]
    assert x.shape == (3, 64, 64) and 0 <= y < len(CLASSES)
    with pytest.raises(DataError, match="unknown split"):
        shapes_dataset("dev")


def test_write_folder_is_an_image_folder_with_sibling_masks(tmp_path: Path) -> None:
    root, masks = write_folder(tmp_path / "shapes", n=10, size=32, seed=0)
    ds = as_dataset(root)
    assert sorted(ds.classes) == sorted(CLASSES) and len(ds) == 10
    files = sorted(masks.rglob("*.png"))
    assert len(files) == 10
    images, _, gen_masks, _ = generate(10, size=32, seed=0)
    first = cv2.imread(str(files[0]), cv2.IMREAD_GRAYSCALE) > 127
    idx = int(files[0].stem)
    assert np.array_equal(first, gen_masks[idx])
    back = cv2.cvtColor(
        cv2.imread(str(root / files[0].parent.name / files[0].name)), cv2.COLOR_BGR2RGB
    )
    assert np.array_equal(back, images[idx])

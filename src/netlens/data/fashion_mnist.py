"""Fashion-MNIST (Zalando, MIT): 70,000 28×28 grayscale clothing images in 10 classes.

Read from the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``,
override with ``NETLENS_FASHION_MNIST``); :func:`download` fetches the same files for users who
have a network (never called implicitly). Splits: ``train`` (the first 55,000 training images),
``val`` (the last 5,000) and ``test`` (the official 10,000).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .resolve import ArrayDataset

__all__ = ["CLASSES", "download", "fashion_mnist", "find_root", "read_split"]

CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)
SYSTEM_ROOT = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
VAL_SIZE = 5000


def find_root() -> Path:
    """The folder holding the four ``.gz`` files, or a DataError that says how to get them."""
    candidates = [Path(p) for p in (os.environ.get("NETLENS_FASHION_MNIST"),) if p]
    candidates += [SYSTEM_ROOT, Path.home() / ".cache" / "netlens" / "fashion-mnist"]
    for root in candidates:
        if all((root / f).is_file() for pair in FILES.values() for f in pair):
            return root
    raise DataError(
        f"Fashion-MNIST not found in {SYSTEM_ROOT}: run `apt-get install dataset-fashion-mnist` "
        "(or netlens.data.fashion_mnist.download() with a network, or set NETLENS_FASHION_MNIST)"
    )


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def read_split(part: str, root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The official ``train`` or ``test`` part: (N×28×28 uint8 images, N int64 labels)."""
    root = root or find_root()
    img_file, lbl_file = FILES[part]
    images = _read_idx(root / img_file, 16).reshape(-1, 28, 28)
    labels = _read_idx(root / lbl_file, 8).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"{root}: {len(images)} images but {len(labels)} labels; files corrupt?")
    return images, labels


def fashion_mnist(split: str = "test", root: str | Path | None = None) -> ArrayDataset:
    """The ``fashion-mnist`` dataset: split ``train``, ``val`` or ``test``."""
    if split not in ("train", "val", "test"):
        raise DataError(f"unknown split '{split}' for fashion-mnist (known: train, val, test)")
    images, labels = read_split(
        "test" if split == "test" else "train", Path(root) if root else None
    )
    if split == "train":
        images, labels = images[:-VAL_SIZE], labels[:-VAL_SIZE]
    elif split == "val":
        images, labels = images[-VAL_SIZE:], labels[-VAL_SIZE:]
    return ArrayDataset(images, labels, CLASSES)


def download(root: str | Path | None = None) -> Path:
    """Fetch the four files from the Fashion-MNIST site into ``root`` (needs a network)."""
    import urllib.request

    root = Path(root or Path.home() / ".cache" / "netlens" / "fashion-mnist")
    root.mkdir(parents=True, exist_ok=True)
    for name in (f for pair in FILES.values() for f in pair):
        if not (root / name).is_file():
            tmp = root / (name + ".part")
            urllib.request.urlretrieve(URL + name, tmp)  # noqa: S310 - fixed https/http URL
            tmp.replace(root / name)
    return root

"""CSV image lists: ``path,label`` rows (a header row is optional), paths relative to the file.

Labels may be class names or integers; classes are the sorted distinct labels (integers sorted
numerically).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from ..images import Preprocess, read_image

__all__ = ["CsvListDataset", "read_csv_list"]


def read_csv_list(path: str | Path) -> tuple[list[Path], list[str]]:
    """The (image path, label) rows of a CSV list; a first row ``path,label`` is a header."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV list not found: {path}")
    with path.open(newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if rows and rows[0][0].strip().lower() in ("path", "file", "filename", "image"):
        rows = rows[1:]
    bad = [i + 1 for i, r in enumerate(rows) if len(r) < 2]
    if bad:
        raise DataError(f"{path}: row {bad[0]} is not 'path,label' (CSV lists need two columns)")
    if not rows:
        raise DataError(f"{path} lists no images (expected 'path,label' rows)")
    files = [(path.parent / r[0].strip()) for r in rows]
    return files, [r[1].strip() for r in rows]


class CsvListDataset(Dataset):
    """Images listed in a CSV file with their labels."""

    def __init__(self, path: str | Path, preprocess: Preprocess | None = None) -> None:
        self.files, raw = read_csv_list(path)
        numeric = all(v.lstrip("-").isdigit() for v in raw)
        self.classes = [str(c) for c in sorted({int(v) if numeric else v for v in raw})]
        index = {c: i for i, c in enumerate(self.classes)}
        self.labels = np.asarray([index[str(int(v)) if numeric else v] for v in raw], np.int64)
        self.preprocess = preprocess or Preprocess()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.preprocess(read_image(self.files[i])), int(self.labels[i])

    def image(self, i: int) -> np.ndarray:
        return read_image(self.files[i])

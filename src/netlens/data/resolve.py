"""Turn whatever a user passes as ``data`` into a Dataset / DataLoader of (image, label)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError
from ..images import IMAGE_SUFFIXES, Preprocess, read_image

if TYPE_CHECKING:
    from ..plugins.manager import PluginHost


class ArrayDataset(Dataset):
    """Images held as a uint8 array (N×H×W or N×H×W×C), preprocessed on access.

    ``masks`` (N×H×W bool), when given, are the ground-truth object masks (for localisation
    metrics); ``dataset.mask(i)`` returns one.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        classes: Sequence[str],
        preprocess: Preprocess | None = None,
        masks: np.ndarray | None = None,
    ) -> None:
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        self.images = images if images.ndim == 4 else images[..., None]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)
        self.preprocess = preprocess or Preprocess(
            size=self.images.shape[1:3],
            channels=self.images.shape[3],
            mean=(0.5,) * self.images.shape[3],
            std=(0.5,) * self.images.shape[3],
        )
        self.masks = masks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.preprocess(self.images[i]), int(self.labels[i])

    def image(self, i: int) -> np.ndarray:
        """The raw H×W×C uint8 image."""
        return self.images[i]

    def mask(self, i: int) -> np.ndarray:
        if self.masks is None:
            raise DataError("this dataset has no ground-truth masks")
        return self.masks[i]

    def with_preprocess(self, preprocess: Preprocess) -> ArrayDataset:
        """The same images and labels, preprocessed for another model."""
        return ArrayDataset(self.images, self.labels, self.classes, preprocess, self.masks)


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>`` files; classes are the sorted subfolder names."""

    def __init__(self, root: str | Path, preprocess: Preprocess) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"data folder not found: {self.root}")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not self.classes:
            raise DataError(
                f"{self.root} has no class subfolders; lay images out as {self.root}/<class>/x.jpg"
            )
        self.items = [
            (f, k)
            for k, c in enumerate(self.classes)
            for f in sorted((self.root / c).rglob("*"))
            if f.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not self.items:
            raise DataError(f"no images under {self.root}/<class>/ ({', '.join(IMAGE_SUFFIXES)})")
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        return self.preprocess(read_image(path)), label

    def image(self, i: int) -> np.ndarray:
        return read_image(self.items[i][0])


class _PairDataset(Dataset):
    """Preprocessed image tensors with labels (and ground-truth masks, for a triple)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, masks: Any = None) -> None:
        self.x, self.y = images, labels
        self.classes = [str(i) for i in range(int(labels.max()) + 1)] if len(labels) else []
        self.masks = None if masks is None else np.asarray(masks).astype(bool)
        self.label_source = "label indices given with the tensors"

    def mask(self, i: int) -> np.ndarray:
        if self.masks is None:
            raise DataError("this data has no ground-truth masks")
        return self.masks[i]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


def as_dataset(
    data: Any,
    preprocess: Preprocess | None = None,
    *,
    host: PluginHost | None = None,
    split: str = "test",
) -> Dataset:
    """A Dataset of (preprocessed image tensor, label) from ``data`` (see module doc)."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, tuple) and len(data) in (2, 3):
        x, y = (
            torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v
            for v in data[:2]
        )
        return _PairDataset(x, y.long(), data[2] if len(data) == 3 else None)
    if isinstance(data, (str, Path)):
        path = Path(data)
        if path.is_dir():
            return ImageFolderDataset(path, preprocess or Preprocess())
        if path.suffix.lower() == ".csv" and path.is_file():
            from .csvlist import CsvListDataset

            return CsvListDataset(path, preprocess or Preprocess())
        name = str(data)
        if host is None:
            from ..plugins.manager import PluginHost

            host = PluginHost()
        if name in host.datasets:
            ds = host.datasets.get(name)(split=split)
            return (
                ds.with_preprocess(preprocess)
                if preprocess and hasattr(ds, "with_preprocess")
                else ds
            )
        known = ", ".join(host.datasets.names()) or "none registered"
        raise DataError(
            f"data '{name}' is neither a folder, a .csv list nor a dataset name (known: {known})"
        )
    raise DataError(
        f"cannot use a {type(data).__name__} as data; pass a folder, a dataset name, a Dataset, "
        "a DataLoader or an (images, labels) pair"
    )


def as_loader(
    data: Any,
    preprocess: Preprocess | None = None,
    *,
    batch_size: int = 64,
    host: PluginHost | None = None,
    split: str = "test",
    limit: int | None = None,
) -> DataLoader:
    """A DataLoader of (images, labels) batches, in a fixed order (no shuffling)."""
    if isinstance(data, DataLoader):
        return data
    ds = as_dataset(data, preprocess, host=host, split=split)
    if limit is not None and limit < len(ds):
        sub = torch.utils.data.Subset(ds, range(limit))
        sub.classes = getattr(ds, "classes", None)  # type: ignore[attr-defined]
        ds = sub
    return DataLoader(ds, batch_size=batch_size, shuffle=False)

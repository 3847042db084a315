"""Training data: the train / val / test splits for whatever ``--data`` names, as loaders.

A dataset name (``shapes``, ``fashion-mnist``, ``mnist5k``, or one from a plugin) gives its
``train``/``val``/``test`` splits; a folder gives ``train/``, ``val/`` and ``test/`` subfolders
when it has them, otherwise a seeded 90/10 train/val split of its class subfolders; a CSV list
(``path,label`` rows) likewise. In-memory array datasets are preprocessed once into tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ..data.resolve import ArrayDataset, ImageFolderDataset
from ..errors import DataError
from ..images import Preprocess

if TYPE_CHECKING:
    from ..plugins.manager import PluginHost

__all__ = ["Splits", "make_loader", "resolve_splits", "to_tensors"]


@dataclass
class Splits:
    """The datasets a run uses, their class names and the preprocessing the model will get."""

    train: Dataset
    val: Dataset
    test: Dataset | None
    classes: list[str]
    preprocess: Preprocess


def _named(name: str, host: PluginHost, preprocess: Preprocess | None) -> Splits:
    factory = host.datasets.get(name)
    parts = {}
    for split in ("train", "val", "test"):
        try:
            parts[split] = factory(split=split)
        except DataError as exc:
            if split == "train" or "split" not in str(exc):
                raise
            parts[split] = None
    train = parts["train"]
    pre = preprocess or getattr(train, "preprocess", None) or Preprocess()
    if preprocess is not None:
        parts = {
            k: v.with_preprocess(pre) if hasattr(v, "with_preprocess") else v
            for k, v in parts.items()
        }
    val = parts["val"] or parts["test"]
    if val is None:
        raise DataError(f"dataset '{name}' has neither a val nor a test split to validate on")
    return Splits(parts["train"], val, parts["test"], list(train.classes), pre)


def _holdout(ds: Dataset, seed: int, fraction: float = 0.1) -> tuple[Dataset, Dataset]:
    order = np.random.default_rng(seed).permutation(len(ds))
    k = max(1, int(len(ds) * fraction))
    return Subset(ds, order[k:].tolist()), Subset(ds, order[:k].tolist())


def _folder(root: Path, preprocess: Preprocess, seed: int) -> Splits:
    if (root / "train").is_dir():
        train = ImageFolderDataset(root / "train", preprocess)
        test = ImageFolderDataset(root / "test", preprocess) if (root / "test").is_dir() else None
        if (root / "val").is_dir():
            val: Dataset = ImageFolderDataset(root / "val", preprocess)
        elif test is not None:
            val = test
        else:
            train_part, val = _holdout(train, seed)
            return Splits(train_part, val, None, train.classes, preprocess)
        return Splits(train, val, test, train.classes, preprocess)
    full = ImageFolderDataset(root, preprocess)
    train_part, val = _holdout(full, seed)
    return Splits(train_part, val, None, full.classes, preprocess)


def resolve_splits(
    data: Any,
    host: PluginHost,
    *,
    preprocess: Preprocess | None = None,
    seed: int = 0,
) -> Splits:
    """Train / val / test datasets for ``data`` (a dataset name, folder or ``.csv`` list)."""
    if isinstance(data, Splits):
        return data
    if not isinstance(data, (str, Path)):
        raise DataError(
            f"train on a dataset name, an image folder or a CSV list, not a {type(data).__name__}"
        )
    path = Path(data)
    if path.suffix.lower() == ".csv" and path.is_file():
        from ..data.csvlist import CsvListDataset

        ds = CsvListDataset(path, preprocess or Preprocess())
        train_part, val = _holdout(ds, seed)
        return Splits(train_part, val, None, ds.classes, ds.preprocess)
    if path.is_dir():
        return _folder(path, preprocess or Preprocess(), seed)
    if str(data) in host.datasets:
        return _named(str(data), host, preprocess)
    known = ", ".join(host.datasets.names()) or "none registered"
    raise DataError(f"--data '{data}' is neither a folder, a .csv list nor a dataset ({known})")


def to_tensors(ds: ArrayDataset) -> TensorDataset:
    """Preprocess an in-memory dataset once: vectorised when no resize is needed."""
    pre = ds.preprocess
    imgs = ds.images
    if tuple(imgs.shape[1:3]) == tuple(pre.size) and imgs.shape[3] == pre.channels:
        x = torch.from_numpy(imgs.copy()).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(pre.mean[: pre.channels]).view(1, -1, 1, 1)
        std = torch.tensor(pre.std[: pre.channels]).view(1, -1, 1, 1)
        x = x.sub_(mean).div_(std)
    else:
        x = torch.stack([pre(img) for img in imgs])
    return TensorDataset(x.contiguous(), torch.from_numpy(ds.labels))


def make_loader(
    ds: Dataset, batch_size: int, *, shuffle: bool, workers: int, pin: bool, seed: int = 0
) -> DataLoader:
    """A DataLoader; array datasets become tensors first (no workers needed for those)."""
    if isinstance(ds, ArrayDataset):
        ds, workers = to_tensors(ds), 0
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=workers > 0,
        generator=gen,
    )

"""Dataset items as dicts, as Hugging Face ``datasets`` and their image processors give them:
``{"image": PIL, "label": 3}``, ``{"pixel_values": tensor, "labels": 3}``.

netlens streams ``(image, label)`` pairs; :func:`pair_keys` finds which keys hold the two (the
names transformers, ``datasets`` and common training code use), and :func:`as_pair` turns one
item, or one batch a DataLoader collated from such items, into that pair. :func:`hub_rows`
makes a ``datasets.Dataset`` itself a torch Dataset, with its label names.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Mapping
from typing import Any

from torch.utils.data import ConcatDataset, Dataset, Subset

from ..errors import DataError, ImageError

__all__ = [
    "BAD_ITEM",
    "IMAGE_KEYS",
    "LABEL_KEYS",
    "as_pair",
    "hub_rows",
    "item_name",
    "item_source",
    "pair_keys",
]

# what reading one item of a dataset raises when its image cannot be read (skipped, reported);
# anything else (a label that is not one, a dict without an image key) stops the run
BAD_ITEM = (ImageError, OSError, ValueError)
IMAGE_KEYS = ("pixel_values", "image", "img", "images", "input", "inputs", "x")
LABEL_KEYS = ("labels", "label", "target", "targets", "y", "class", "category")


def pair_keys(item: Mapping[str, Any]) -> tuple[str, str]:
    """The keys of the image and of the label in a dict item; one line when either is missing."""
    image = next((k for k in IMAGE_KEYS if k in item), None)
    label = next((k for k in LABEL_KEYS if k in item), None)
    if image is None or label is None:
        keys = ", ".join(repr(k) for k in list(item)[:8])
        raise DataError(
            f"the Dataset's items are dicts with keys {keys}: netlens reads the image from one "
            f"of {', '.join(IMAGE_KEYS[:3])} and the label from one of "
            f"{', '.join(LABEL_KEYS[:3])}; rename the keys or pass (image, label) pairs"
        )
    return image, label


def as_pair(item: Any) -> Any:
    """``(image, label)`` of a dict item or collated dict batch; anything else as it is."""
    if not isinstance(item, Mapping):
        return item
    image, label = pair_keys(item)
    return item[image], item[label]


def hub_rows(data: Any) -> Dataset | None:
    """A Hugging Face ``datasets.Dataset`` (not a torch Dataset: its rows are dicts) as a torch
    Dataset, its ``ClassLabel`` names as ``classes`` so that labels are matched to the model's
    by name; None for anything else."""
    if not type(data).__module__.startswith("datasets.") or not hasattr(data, "features"):
        return None
    return _HubRows(data)


class _HubRows(Dataset):
    def __init__(self, rows: Any) -> None:
        self.rows = rows
        label = next((k for k in LABEL_KEYS if k in rows.features), None)
        names = getattr(rows.features[label], "names", None) if label is not None else None
        if names:
            self.classes = list(names)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Any:
        return self.rows[int(i)]


def item_source(dataset: Any, i: int) -> str | None:
    """The file behind item ``i`` of ``dataset`` (netlens' folders and CSV lists, torchvision's
    ``ImageFolder``), through ``Subset``, ``ConcatDataset`` (part by part) and netlens' own
    wrappers; None when the items are not files (tensors, a Hugging Face dataset) or sit under
    a wrapper of the user's, which may read any item for position ``i`` (a reordering)."""
    ds = dataset
    for _ in range(16):
        if isinstance(ds, Subset):
            ds, i = ds.dataset, int(ds.indices[i])
            continue
        if isinstance(ds, ConcatDataset):
            if not 0 <= i < len(ds):
                return None
            part = bisect.bisect_right(ds.cumulative_sizes, i)
            ds, i = ds.datasets[part], i - (ds.cumulative_sizes[part - 1] if part else 0)
            continue
        for attr in ("files", "items", "samples"):
            seq = getattr(ds, attr, None)
            if isinstance(seq, (list, tuple)) and 0 <= i < len(seq):
                item = seq[i][0] if isinstance(seq[i], tuple) else seq[i]
                return str(item) if isinstance(item, (str, os.PathLike)) else None
        inner = _netlens_inner(ds)
        if inner is None:
            return None
        ds = inner
    return None


def _netlens_inner(ds: Any) -> Any:
    """The dataset that one of netlens' own wrappers reads item ``i`` of as its item ``i``
    (relabelled, preprocessed, guarded); None for anything else."""
    if not type(ds).__module__.startswith("netlens."):
        return None
    inner = getattr(ds, "inner", None)
    if inner is None:
        inner = getattr(ds, "dataset", None)
    try:
        return inner if inner is not None and len(inner) == len(ds) else None
    except TypeError:
        return None


def item_name(dataset: Any, i: int) -> str:
    """The file behind item ``i`` (see :func:`item_source`), else ``item i``."""
    return item_source(dataset, i) or f"item {i}"


def item_labels(ds: Any) -> list[int] | None:
    """The class index of every item of ``ds``, read off its list (no image is read); None
    when the dataset does not hold them as a list (or the labels are not one class each)."""
    import numpy as np

    n = len(ds)
    while ds is not None:
        items = getattr(ds, "items", None) or getattr(ds, "samples", None)
        if isinstance(items, list) and len(items) == n and items and isinstance(items[0], tuple):
            try:
                return [int(lab) for _, lab in items]
            except (TypeError, ValueError):
                return None
        for attr in ("labels", "targets"):
            value = getattr(ds, attr, None)
            if value is None or callable(value):
                continue
            try:
                arr = np.asarray(value.cpu() if hasattr(value, "cpu") else value)
            except (TypeError, ValueError):
                continue
            if arr.ndim == 1 and len(arr) == n and arr.dtype.kind in "iu":
                return arr.astype(int).tolist()
        ds = getattr(ds, "dataset", None) or getattr(ds, "ds", None)
    return None

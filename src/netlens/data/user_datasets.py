"""A user's own Dataset as netlens reads it: labels moved to the model's classes by name, pixels
preprocessed as the model's images, and the forms users hand over (a ``Subset`` or
``random_split``, a ``ConcatDataset``, a stream, dict items) read as what they are.
:func:`netlens.data.resolve.as_dataset` sends a Dataset that is not one of netlens' own here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, IterableDataset, Subset

from ..errors import DataError
from ..images import as_pixels
from ..preprocess import Preprocess
from .items import as_pair, pair_keys
from .labels import match_names

__all__ = [
    "NO_LABELS",
    "Picked",
    "is_bare_image",
    "is_preprocessed",
    "label_source",
    "sized",
    "under_subsets",
    "users_dataset",
]


def sized(preprocess: Any, first_image: Callable[[], np.ndarray]) -> Any:
    """``preprocess`` with an input size: a spec of unknown size takes the first image's
    (for files: the first that reads, :func:`~netlens.images.first_readable`)."""
    if getattr(preprocess, "size", 0) is None and getattr(preprocess, "function", None) is None:
        return preprocess.sized_like(first_image().shape[:2])
    return preprocess


def label_source(data: Any) -> str:
    """How the labels of ``data`` (a Dataset or DataLoader) were assigned, for tables to name."""
    ds = getattr(data, "dataset", data)
    while not hasattr(ds, "label_source") and hasattr(ds, "dataset"):
        ds = ds.dataset  # a Subset
    return getattr(ds, "label_source", None) or "the Dataset's own labels (class indices)"


def users_dataset(
    ds: Dataset, preprocess: Preprocess | None, classes: Any, label_map: Any
) -> Dataset:
    """A user's Dataset as netlens streams it: labels moved to the model's classes by name
    (:func:`_matched_by_name`), pixels preprocessed as the model's images (:class:`_Preprocessed`).
    Its first item, read once, tells what its labels and images are. A ``Subset`` (a split) is
    its dataset so read, of which it picks the same items (:class:`Picked`: with their masks);
    a ``ConcatDataset`` is its parts so read (:func:`_concat`); a stream (an ``IterableDataset``)
    is read in order (:class:`_StreamItems`)."""
    if isinstance(ds, Subset):
        base, picked = under_subsets(ds)
        return Picked(users_dataset(base, preprocess, classes, label_map), picked or [])
    if isinstance(ds, ConcatDataset):
        return _concat(ds, preprocess, classes, label_map)
    if isinstance(ds, IterableDataset):
        ds = _StreamItems(ds)
    try:
        first = ds[0] if len(ds) > 0 else None  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - an unreadable first item is reported when it is drawn
        first = None
    if isinstance(first, Mapping):  # {"image": ..., "label": ...}: Hugging Face datasets
        ds, first = _Pairs(ds, pair_keys(first)), as_pair(first)
    elif is_bare_image(first):  # a C×H×W tensor is one image, not (image, label, ...) parts
        ds, first = _Unlabelled(ds), (first, UNLABELLED)
    ds = _matched_by_name(ds, classes, label_map, first)
    image = first[0] if first is not None else None
    if preprocess is None or image is None or is_preprocessed(image):
        return ds
    return _Preprocessed(ds, sized(preprocess, lambda: as_pixels(image)))


_CARRIED = ("classes", "label_source", "relabel", "preprocess", "masks")


def under_subsets(data: Any) -> tuple[Any, list[int] | None]:
    """The dataset under ``data``'s Subsets (a user's split, ``--limit``'s cut) and the
    positions in it that they pick, composed (None: all of it)."""
    picked = None
    while isinstance(data, Subset):
        idx = [int(i) for i in data.indices]
        picked = idx if picked is None else [idx[i] for i in picked]
        data = data.dataset
    return data, picked


class Picked(Subset):
    """Items ``indices`` of ``dataset`` (a user's ``Subset``, ``random_split``, as netlens reads
    its dataset), with that dataset's classes, label source, label mapping, preprocessing and
    masks; mask ``i`` is the dataset's mask ``indices[i]``."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        super().__init__(dataset, indices)
        for attr in _CARRIED:
            if hasattr(dataset, attr):
                setattr(self, attr, getattr(dataset, attr))
        for attr in ("mask", "image"):  # by the dataset's position (picklable, for workers)
            if hasattr(dataset, attr):
                setattr(self, attr, functools.partial(_at, getattr(dataset, attr), self.indices))


def _at(get: Callable[[int], Any], indices: Sequence[int], i: int) -> Any:
    return get(indices[i])


def _class_names(ds: Any) -> list[str] | None:
    """A dataset's class names (through Subsets); None when it names none."""
    while isinstance(ds, Subset) and getattr(ds, "classes", None) is None:
        ds = ds.dataset
    names = getattr(ds, "classes", None)
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def _concat(ds: ConcatDataset, preprocess: Any, classes: Any, label_map: Any) -> Dataset:
    """A ``ConcatDataset``: each part read as a Dataset of its own (labels by its own class
    names); one line when the parts number different classes that cannot be matched."""
    names = [_class_names(p) for p in ds.datasets]
    parts = [users_dataset(p, preprocess, classes, label_map) for p in ds.datasets]
    moved = [getattr(p, "label_source", None) is not None for p in parts]  # matched, or as is
    if len({tuple(n) if n else None for n in names}) > 1 and not all(moved):
        shown = "; ".join(", ".join(n[:4]) if n else "no class names" for n in names)
        raise DataError(
            f"the ConcatDataset's parts number different classes ({shown}) and "
            + (
                "some do not name theirs"
                if isinstance(classes, Sequence) and classes
                else "the model has no class names to match them to"
            )
            + ": give every part the same classes, or the model its class names"
        )
    return _Concat(parts, any(hasattr(p, "relabel") for p in parts))


class _Concat(ConcatDataset):
    """A user's ``ConcatDataset``, each part's labels moved to the model's classes."""

    def __init__(self, parts: list[Dataset], per_part: bool) -> None:
        super().__init__(parts)
        self.per_part = per_part  # a user's DataLoader over it cannot relabel its batches
        names = {tuple(getattr(p, "classes", None) or ()) for p in parts}
        if len(names) == 1 and names != {()}:
            self.classes = list(next(iter(names)))
        sources = list(dict.fromkeys(_own_source(p) for p in parts))
        self.label_source = "; ".join(sources)


def _own_source(ds: Any) -> str:
    return getattr(ds, "label_source", None) or label_source(ds)


class _StreamItems(Dataset):
    """A user's stream (an ``IterableDataset`` with ``__len__``) read by position: in order,
    as netlens streams it, from its start again for an earlier item. Its first items (up to
    :data:`_KEPT`: what netlens peeks before it streams) are kept, so a one-pass stream (whose
    ``__iter__`` returns the same iterator: a network or shard reader) is read once; an earlier
    item past them, of such a stream, is refused in one line."""

    def __init__(self, stream: IterableDataset) -> None:
        self.stream, self._it, self._next = stream, None, 0
        self._head: list[Any] = []  # items 0, 1, ... as read (at most _KEPT)
        for attr in ("classes", "target_transform", "mask", "masks"):
            if hasattr(stream, attr):
                setattr(self, attr, getattr(stream, attr))

    def __len__(self) -> int:
        return len(self.stream)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        if i < len(self._head):
            return self._head[i]
        if self._it is None or i < self._next:  # from the start again (netlens peeked)
            self._rewind(i)
        for item in self._it:  # type: ignore[union-attr]
            if self._next == len(self._head) and self._next < _KEPT:
                self._head.append(item)
            self._next += 1
            if self._next - 1 == i:
                return item
        raise DataError(
            f"the {type(self.stream).__name__} stream ended after {self._next} items, but its "
            f"__len__ says {len(self)}; make __len__ its number of items"
        )

    def _rewind(self, i: int) -> None:
        it = iter(self.stream)
        if self._it is not None and it is self._it:  # the same iterator, part read already
            raise DataError(
                f"the {type(self.stream).__name__} stream can be read only once (its __iter__ "
                f"returns the same iterator), and item {i} was read before; make __iter__ "
                "return a new iterator"
            )
        self._it, self._next = it, 0


_KEPT = 8  # a stream's first items kept as read: netlens peeks one or two before it streams


def _keep_masks(wrapper: Dataset, ds: Dataset) -> None:
    """A wrapper of a user's Dataset keeps its ground-truth masks (``mask(i)``, ``masks``)."""
    for attr in ("mask", "masks"):
        if hasattr(ds, attr):
            setattr(wrapper, attr, getattr(ds, attr))


#: The label of an item that has none (a Dataset of bare images): "unknown", as for images
#: given to analyzers that read no labels.
UNLABELLED = -1
NO_LABELS = "none: the Dataset's items are images without labels"


def is_bare_image(item: Any) -> bool:
    """Whether a Dataset's item is an image alone (a tensor, an array, a PIL image), with
    no label beside it."""
    if isinstance(item, (torch.Tensor, np.ndarray)):
        return True
    return type(item).__module__.startswith("PIL.") and hasattr(item, "getbands")


class _Unlabelled(Dataset):
    """A Dataset of bare images as ``(image, -1)`` pairs: the label is unknown. Analyzers
    that read no labels (``stats``, ``top-activations``) take it; its ``label_source``
    (:data:`NO_LABELS`, carried by the wrappers over it) tells the others."""

    label_source = NO_LABELS

    def __init__(self, ds: Dataset) -> None:
        self.dataset = ds
        _keep_masks(self, ds)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, int]:
        item = self.dataset[i]
        if not is_bare_image(item):
            raise DataError(
                f"the Dataset's item {i} is a {type(item).__name__}, but its first is an "
                "image alone; give every item the same form (an image, or (image, label))"
            )
        return item, UNLABELLED


class _Pairs(Dataset):
    """A Dataset of dict items as ``(image, label)`` pairs (see :mod:`netlens.data.items`)."""

    def __init__(self, ds: Dataset, keys: tuple[str, str]) -> None:
        self.dataset, self.keys = ds, keys
        names = getattr(ds, "classes", None)
        if names is not None:
            self.classes = names
        _keep_masks(self, ds)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        item = self.dataset[i]
        return item[self.keys[0]], item[self.keys[1]]


def _matched_by_name(ds: Dataset, classes: Any, label_map: Any, first: Any) -> Dataset:
    """``ds`` with its labels moved to the model's classes of the same names: when it labels
    items with names (``first``, its first item, says), or names its classes (``ds.classes``, as
    torchvision's ``ImageFolder`` and CIFAR do) and has no ``target_transform`` (whose labels
    are taken as the model's class indices); as it is otherwise, or for a model without class
    names."""
    if first is not None and isinstance(first[1], str):
        if not classes:
            raise DataError(
                "the Dataset's labels are names and the model has no class names to match "
                "them to: give the model its classes (--classes FILE, classes= in Python) or "
                "label the items with class indices"
            )
        return _NamedLabels(ds, classes, label_map)
    names = getattr(ds, "classes", None)
    named = isinstance(names, (list, tuple)) and bool(names)
    if not named or not all(isinstance(n, str) for n in names) or not classes:
        return ds
    if getattr(ds, "target_transform", None) is not None:
        return _TargetTransformed(ds, classes)
    match = match_names(names, classes, label_map=label_map, what="the Dataset's class names")
    return _Relabelled(ds, [match.index[n] for n in names], match)


class _TargetTransformed(Dataset):
    """A user's Dataset with a ``target_transform``: its labels, as that makes them, are taken
    as the model's class indices (not moved again by its class names)."""

    label_source = "the Dataset's target_transform labels as model class indices"

    def __init__(self, ds: Dataset, classes: Any) -> None:
        self.dataset = ds
        if isinstance(classes, Sequence):
            self.classes = list(classes)
        _keep_masks(self, ds)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i]


class _Relabelled(Dataset):
    """A user's Dataset, its label ``k`` (an index into its own ``classes``) as the model's."""

    def __init__(self, ds: Dataset, to_model: list[int], match: Any) -> None:
        self.dataset, self.to_model = ds, to_model
        self.classes, self.label_source = match.classes, match.source
        _keep_masks(self, ds)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        item = self.dataset[i]
        return (item[0], int(self.relabel(item[1])), *item[2:])

    def relabel(self, labels: Any) -> torch.Tensor:
        """The Dataset's labels (its class indices, a tensor of them) as the model's class
        indices: for its items, and for the batches of a user's DataLoader over it."""
        labels = torch.as_tensor(labels)
        table = torch.as_tensor(self.to_model)
        bad = (labels < 0) | (labels >= len(table))
        if labels.is_floating_point() or bool(bad.any()):
            k = labels[bad][0].item() if bool(bad.any()) else labels.flatten()[0].item()
            raise DataError(
                f"the Dataset's label {k} is not an index into its classes "
                f"({len(table)} names); its labels must number its classes"
            )
        return table[labels.long()]


class _NamedLabels(Dataset):
    """A user's Dataset labelled with class names (``(image, "cat")``): each name matched to
    the model's class of that name as it is drawn, as folder names are (exact, then case- and
    separator-insensitive; ``label_map`` first; an unknown name is one line)."""

    label_source = "the Dataset's label names matched to model classes"

    def __init__(self, ds: Dataset, classes: Sequence[str], label_map: Any) -> None:
        self.dataset, self.classes, self.label_map = ds, classes, label_map
        self._index: dict[str, int] = {}
        _keep_masks(self, ds)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        item = self.dataset[i]
        return (item[0], self._to_model(item[1]), *item[2:])

    def relabel(self, labels: Any) -> torch.Tensor:
        """A DataLoader's batch of names (a list, as torch collates strings) as class indices."""
        names = [labels] if isinstance(labels, str) else list(labels)
        return torch.tensor([self._to_model(n) for n in names], dtype=torch.long)

    def _to_model(self, name: Any) -> int:
        if not isinstance(name, str):
            raise DataError(
                f"the Dataset's labels are names, but one is a {type(name).__name__} ({name!r:.40})"
                "; label every item the same way"
            )
        if name not in self._index:
            match = match_names([name], self.classes, label_map=self.label_map, what="label names")
            self._index[name] = match.index[name]
        return self._index[name]


def is_preprocessed(image: Any) -> bool:
    return isinstance(image, torch.Tensor) and image.is_floating_point()


class _Preprocessed(Dataset):
    """A user's Dataset of pixels (PIL images, arrays, uint8 tensors: ``ImageFolder`` or CIFAR
    without a transform), each image preprocessed on access; labels as they are."""

    def __init__(self, ds: Dataset, preprocess: Preprocess) -> None:
        self.dataset, self.preprocess = ds, preprocess
        for attr in ("classes", "label_source", "relabel"):
            if hasattr(ds, attr):
                setattr(self, attr, getattr(ds, attr))
        _keep_masks(self, ds)  # at the photos' size: evaluate resizes them as the photos

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        item = self.dataset[i]
        x = item[0] if is_preprocessed(item[0]) else self.preprocess(as_pixels(item[0]))
        return (x, *item[1:])

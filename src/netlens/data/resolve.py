"""Turn whatever a user passes as ``data`` into a Dataset / DataLoader of (image, label)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError, NetlensWarning
from ..images import IMAGE_SUFFIXES, as_pixels, first_readable, is_hidden, list_images, read_image
from ..preprocess import Preprocess
from .fastai_data import FastaiItems, fastai_items, is_fastai_data, model_classes
from .items import hub_rows
from .labels import UNSET, index_labels, index_per_row, match_names
from .user_datasets import is_preprocessed, label_source, sized, users_dataset

if TYPE_CHECKING:
    from ..plugins.manager import PluginHost


DATASET_DEFAULT = "netlens dataset default"  # the source of a dataset's preprocessing made
# without a model's: a model's preprocessing replaces it (:func:`as_dataset`)


class ArrayDataset(Dataset):
    """Images held as a uint8 array (N×H×W or N×H×W×C), preprocessed on access.

    ``masks`` (N×H×W bool), when given, are the ground-truth object masks (for localisation
    metrics); ``dataset.mask(i)`` returns one. ``label_source`` says how the labels were
    assigned (see :meth:`for_classes`). Without ``preprocess`` the images keep their size and
    are normalised with mean and std 0.5; handed to a model (``lens.evaluate(dataset)``), the
    dataset takes the model's preprocessing instead (unless netlens only guesses it) and its
    labels are matched to the model's classes by name.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        classes: Sequence[str],
        preprocess: Preprocess | None = None,
        masks: np.ndarray | None = None,
        label_source: str = "the dataset's own labels",
    ) -> None:
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        self.images = images if images.ndim == 4 else images[..., None]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)
        self.preprocess = sized(preprocess, lambda: self.images[0]) or Preprocess(
            size=self.images.shape[1:3],
            channels=self.images.shape[3],
            mean=(0.5,) * self.images.shape[3],
            std=(0.5,) * self.images.shape[3],
            source=DATASET_DEFAULT,
        )
        self.masks = masks
        self.label_source = label_source

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
        return ArrayDataset(
            self.images, self.labels, self.classes, preprocess, self.masks, self.label_source
        )

    def for_classes(
        self,
        classes: Sequence[str] | None,
        label_map: Mapping[str, Any] | str | Path | None = None,
        name: str = "dataset",
    ) -> ArrayDataset:
        """The same images, labels renumbered to the model's ``classes`` by class name.

        None (a model without class names) keeps the dataset's own numbering.
        """
        if classes is None and label_map is None:
            src = f"{name} labels as they are (model has no class names)"
            return ArrayDataset(
                self.images, self.labels, self.classes, self.preprocess, self.masks, src
            )
        match = match_names(self.classes, classes, label_map=label_map, what=f"{name} class names")
        lut = np.asarray([match.index[c] for c in self.classes], np.int64)
        return ArrayDataset(
            self.images, lut[self.labels], match.classes, self.preprocess, self.masks, match.source
        )


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>`` files, labelled by matching the folder names to ``classes``.

    Args:
        root: the folder holding one subfolder of images per class.
        preprocess: the model's preprocessing (a spec of unknown size takes the first image's).
        classes: the model's class names: each folder name is matched to one (exactly, then
            ignoring case and separators); None: the model has none (sorted folder names, with a
            warning); not given: sorted folder names.
        label_map: folder name → model class name or index, for names the model spells otherwise.

    Attributes:
        classes: the names the labels index (the model's classes when matched).
        folder_classes: the subfolder names found.
        label_source: how labels were assigned, e.g. "folder names matched to model classes".
    """

    def __init__(
        self,
        root: str | Path,
        preprocess: Preprocess,
        classes: Sequence[str] | None = UNSET,
        label_map: Mapping[str, Any] | str | Path | None = None,
        num_classes: int | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"data folder not found: {self.root}")
        files = {
            d.name: list_images(d)
            for d in sorted(self.root.iterdir())
            if d.is_dir() and not is_hidden(d, self.root)
        }
        if not files:
            raise DataError(
                f"{self.root} has no class subfolders; lay images out as {self.root}/<class>/x.jpg"
            )
        self.folder_classes = [name for name, found in files.items() if found]
        if not self.folder_classes:
            raise DataError(f"no images under {self.root}/<class>/ ({', '.join(IMAGE_SUFFIXES)})")
        known = classes if isinstance(classes, Sequence) else []
        if label_map is None and not set(self.folder_classes) & set(known):
            _refuse_splits(self.root, self.folder_classes)
        # numbered by position (no model names to match): every class folder counts, empty
        # ones too, as torchvision's ImageFolder (and so a model trained with it) numbers them
        by_position = not isinstance(classes, Sequence) and label_map is None
        match = match_names(
            list(files) if by_position else self.folder_classes,
            classes,
            label_map=label_map,
            num_classes=num_classes,
        )
        self.classes, self.label_source = match.classes, match.source
        self.items = [(f, match.index[c]) for c in self.folder_classes for f in files[c]]
        self.preprocess = sized(preprocess, lambda: first_readable(f for f, _ in self.items))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        return self.preprocess(read_image(path)), label

    def image(self, i: int) -> np.ndarray:
        return read_image(self.items[i][0])


# the split folders a dataset's root may hold, by role, compared case-insensitively
SPLIT_ROLES = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation", "dev", "eval"),
    "test": ("test", "testing"),
}
SPLITS = {name for names in SPLIT_ROLES.values() for name in names}
# the splits read for each split asked for, in order: held-out images for "test" and "val"
_READ_FOR = {"test": ("test", "val"), "val": ("val", "test"), "train": ("train",)}


def split_folders(root: Path) -> dict[str, Path]:
    """The split folders of ``root`` by role (``train``, ``val``, ``test``); any case."""
    subdirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not is_hidden(d, root)]
    found = {}
    for role, names in SPLIT_ROLES.items():
        hits = [d for d in subdirs if d.name.casefold() in names]
        if len(hits) > 1:
            both = " and ".join(f"{d.name}/" for d in hits)
            raise DataError(f"{root} holds {both}, both a {role} split; keep one of them")
        if hits:
            found[role] = hits[0]
    return found


def _labelled(folder: Path) -> bool:
    """A split folder holding class folders of images (not only loose, unlabelled ones)."""
    return any(d.is_dir() and not is_hidden(d, folder) and list_images(d) for d in folder.iterdir())


def _holds_splits(root: Path, names: list[str]) -> bool:
    """``names`` (the folders of ``root`` that hold images) are a dataset's splits:
    ``train/``, ``val/``..., at least one holding class folders; a split of loose images in no
    class folder is an unlabelled one (Kaggle's ``test/``). A split's mask folder beside it
    (``val_masks/``, where ``evaluate`` reads masks) is neither a split nor a class."""
    splits = split_names(names)
    return (
        bool(splits)
        and all(n.casefold() in SPLITS or _mask_folder(n) for n in names)
        and any(_labelled(root / n) for n in splits)
    )


def _mask_folder(name: str) -> bool:
    """``name`` is a split's mask folder: ``val_masks``, ``Test_masks``."""
    head, sep, _ = name.casefold().rpartition("_masks")
    return bool(sep) and not name.casefold()[len(head) + len(sep) :] and head in SPLITS


def split_names(names: list[str]) -> list[str]:
    """``names`` without the splits' mask folders."""
    return [n for n in names if not _mask_folder(n)]


def _unlabelled_note(root: Path, names: list[str]) -> str:
    loose = [n for n in split_names(names) if not _labelled(root / n)]
    if not loose:
        return ""
    said = ", ".join(f"{n}/" for n in loose)
    return f"; {said} holds images in no class folder (unlabelled), not read"


def _refuse_splits(root: Path, names: list[str]) -> None:
    """A dataset's root (``train/``, ``val/``, each holding class folders) given where one
    split was meant: its splits would be read as classes. The hint names a labelled held-out
    split (test, else val), never the training one; an unlabelled split (loose images) only
    for commands that read no labels."""
    if not _holds_splits(root, names):
        return
    dirs = {r: d for r, d in split_folders(root).items() if d.name in names}
    labelled = {r: d for r, d in dirs.items() if _labelled(d)}
    held_out = labelled.get("test") or labelled.get("val")
    loose = [d for r, d in dirs.items() if r != "train" and r not in labelled]
    if held_out:
        hint = f"pass one split (--data {held_out})"
    else:
        hint = "pass a folder of held-out images in class folders (its training split shows "
        hint += "the model nothing new)"
        if loose:
            hint += f", or --data {loose[0]} (unlabelled) where no labels are read (stats, top)"
    kinds = ", ".join(n if _labelled(root / n) else f"{n} (unlabelled)" for n in split_names(names))
    raise DataError(f"{root} holds the splits {kinds}, not classes; {hint}")


def _chosen_split(root: Path, split: str | None, classes: Any, label_map: Any) -> Path | None:
    """The folder to read when ``root`` is a dataset's root of split folders (``train/`` +
    ``Val/``...) and a ``split`` is asked for: its test split for ``test`` (else its val
    split), its val split for ``val`` (else its test split); said in a warning. Only a split
    of class folders is read: a split of loose images (Kaggle's unlabelled ``test/``) has no
    labels, and reading the same images for every command keeps scores comparable. None:
    ``root`` is read as it is (not a split root, no split asked for, or folders the model's
    classes name)."""
    if split is None or label_map is not None:
        return None
    names = [
        d.name
        for d in sorted(root.iterdir())
        if d.is_dir() and not is_hidden(d, root) and list_images(d)
    ]
    known = set(classes) if isinstance(classes, Sequence) else set()
    if not _holds_splits(root, names) or set(names) & known:
        return None
    dirs = {r: d for r, d in split_folders(root).items() if d.name in names and _labelled(d)}
    role = next((r for r in _READ_FOR.get(split, (split,)) if r in dirs), None)
    if role is None:
        return None  # ImageFolderDataset refuses it, naming the split to pass
    warnings.warn(
        f"{root} holds the splits {', '.join(split_names(names))}: reading its {role} split "
        f"{dirs[role].name}/ (pass --data {dirs[role]}, or another split's folder, to choose)"
        f"{_unlabelled_note(root, names)}",
        NetlensWarning,
        stacklevel=4,
    )
    return dirs[role]


class _PairDataset(Dataset):
    """Image tensors with labels (and ground-truth masks, for a triple). Float images are
    preprocessed already; pixels (uint8) are preprocessed on access, as a Dataset's are."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        classes: Any = UNSET,
        n: int | None = None,
        masks: Any = None,
        preprocess: Preprocess | None = None,
    ) -> None:
        labels = torch.as_tensor(index_per_row(labels.detach().cpu())).long()
        if len(labels) != len(images):
            raise DataError(
                f"{len(images)} images but {len(labels)} labels; give one label per image"
            )
        self.x, self.y = images, labels
        pixels = preprocess is not None and len(images) > 0 and not is_preprocessed(images)
        self.preprocess = sized(preprocess, lambda: as_pixels(images[0].cpu())) if pixels else None
        match = index_labels(labels.tolist(), classes, what="the given labels", num_classes=n)
        self.classes, self.label_source = match.classes, "(images, labels) pair: class indices"
        self.masks = None if masks is None else np.asarray(masks).astype(bool)

    def mask(self, i: int) -> np.ndarray:
        if self.masks is None:
            raise DataError("this data has no ground-truth masks")
        return self.masks[i]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.x[i] if self.preprocess is None else self.preprocess(as_pixels(self.x[i].cpu()))
        return x, int(self.y[i])


def as_dataset(
    data: Any,
    preprocess: Preprocess | None = None,
    *,
    host: PluginHost | None = None,
    split: str | None = None,
    classes: Sequence[str] | None = UNSET,
    label_map: Mapping[str, Any] | str | Path | None = None,
    num_classes: int | None = None,
) -> Dataset:
    """A Dataset of (preprocessed image tensor, label) from ``data`` (see module doc).

    Args:
        data: a folder of class subfolders, a ``.csv`` list, a dataset name, a Dataset, an
            ``(images, labels)`` pair, or fastai's data (``learn.dls``: its validation set,
            ``learn.dls.valid``, ``learn.dls.valid_ds``; see :mod:`netlens.data.fastai_data`).
        preprocess: the model's preprocessing.
        split: the split to read: a named dataset's (None: ``test``), and a dataset root's
            split folder (``train/`` + ``Val/`` + ``test/``, in any case: for ``test`` its
            test split, else its val split; for ``val`` the other way round; with a warning
            naming it). None: a dataset root is refused, its message naming the split to pass.
        classes: the model's class names (``lens.classes``): folder names, CSV names and a named
            dataset's classes are matched to them, so labels are the model's class indices.
            None: the model has no class names (sorted names, with a warning). Not given: the
            data's own sorted names (no model involved).
        label_map: data name → model class name or index (a dict or a file), for names the
            model spells otherwise.
        num_classes: the model's class count, to range-check integer labels when ``classes``
            is None.

    The dataset's ``label_source`` attribute says how labels were assigned
    (:func:`label_source` reads it off any dataset or loader).
    """
    data = hub_rows(data) or data  # a Hugging Face datasets.Dataset: rows of dicts
    if is_fastai_data(data):  # learn.dls, learn.dls.valid, learn.dls.valid_ds
        return fastai_dataset(data, preprocess, classes=classes, label_map=label_map)
    if isinstance(data, Dataset):  # one of netlens' own says its label source
        if label_source(data) != label_source(None):
            return _own_dataset(data, preprocess, classes, label_map, num_classes)
        return users_dataset(data, preprocess, classes, label_map)
    if isinstance(data, tuple) and len(data) in (2, 3):
        from .image_list import is_photo_list, photo_list_tensor

        images = data[0]  # a list of photos (paths, PIL, mixed sizes): read as lens.cam reads
        images = photo_list_tensor(images, preprocess) if is_photo_list(images) else images
        x, y = (
            torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v
            for v in (images, data[1])
        )
        masks = data[2] if len(data) == 3 else None
        return _PairDataset(x, y, classes, num_classes, masks, preprocess)
    if isinstance(data, (str, Path)):
        return _from_path(data, preprocess, host, split, classes, label_map, num_classes)
    raise DataError(
        f"cannot use a {type(data).__name__} as data; pass a folder, a dataset name, a Dataset, "
        "a DataLoader or an (images, labels) pair"
    )


def _own_dataset(
    ds: Dataset, preprocess: Preprocess | None, classes: Any, label_map: Any, num_classes: Any
) -> Dataset:
    """One of netlens' own datasets, made without the model (``ArrayDataset(images, labels,
    names)``, ``as_dataset(folder)``, a ``CsvListDataset``): preprocessed as the model's images
    where it carries only netlens' default, and its labels matched to the model's classes by
    name, as a named dataset's and a folder's are. As it is otherwise, and where the model's
    preprocessing is itself a guess."""
    own = getattr(ds, "preprocess", None)
    default = getattr(own, "source", None) == DATASET_DEFAULT and preprocess is not None
    pre = preprocess if default and not _guessed(preprocess) else own
    names, model = getattr(ds, "classes", None) or [], classes if classes is not UNSET else None
    named = bool(names) and all(isinstance(n, str) for n in names)
    unmatched = named and bool(model) and list(names) != list(model)
    if isinstance(ds, ImageFolderDataset) and default and (pre is not own or unmatched):
        return ImageFolderDataset(ds.root, pre, classes, label_map, num_classes)
    from .csvlist import CsvListDataset

    if isinstance(ds, CsvListDataset) and default and (pre is not own or unmatched):
        return CsvListDataset(ds.path, pre, classes, label_map, num_classes)
    if isinstance(ds, ArrayDataset):
        ds = ds.with_preprocess(pre) if pre is not own else ds
        return ds.for_classes(classes, label_map) if unmatched else ds
    return ds


def _guessed(preprocess: Preprocess) -> bool:
    """The normalisation is netlens' guess (the model records none and the user gave none)."""
    from ..preprocess.from_model import GUESSED

    return GUESSED in preprocess.source and "mean=" not in preprocess.source


def fastai_dataset(
    data: Any,
    preprocess: Preprocess | None,
    *,
    classes: Any = UNSET,
    label_map: Any = None,
    labelled: bool = True,
    label_source: str | None = None,
) -> Dataset:
    """fastai's data (``learn.dls``, a fastai DataLoader, ``Datasets``) as a Dataset of
    (preprocessed image, label): its items as fastai opens them, preprocessed as the model's
    images, labels matched to the model's ``classes`` by ``dls.vocab``'s names (not
    ``labelled``: every label -1, and data without labels is fine)."""
    items = fastai_items(data, labelled=labelled, label_source=label_source)
    if not isinstance(items, FastaiItems):  # a fastai DataLoader over a torch Dataset
        if not labelled:
            return items
        return as_dataset(items, preprocess, classes=classes, label_map=label_map)
    if not labelled:
        classes, label_map = None, None
    return users_dataset(items, preprocess, model_classes(classes), label_map)


def _from_path(
    data: str | Path,
    preprocess: Preprocess | None,
    host: PluginHost | None,
    split: str | None,
    classes: Any,
    label_map: Any,
    num_classes: int | None,
) -> Dataset:
    path = Path(data)
    pre = preprocess or Preprocess(source=DATASET_DEFAULT)
    if path.is_dir():
        path = _chosen_split(path, split, classes, label_map) or path
        return ImageFolderDataset(path, pre, classes, label_map, num_classes=num_classes)
    if path.suffix.lower() == ".csv" and path.is_file():
        from .csvlist import CsvListDataset

        return CsvListDataset(path, pre, classes, label_map, num_classes)
    name = str(data)
    if host is None:
        from ..plugins.manager import PluginHost

        host = PluginHost()
    if name not in host.datasets:
        from ..naming import display_path

        known = ", ".join(host.datasets.names()) or "none registered"
        if path.suffix.lower() == ".csv" and not path.exists():  # a list: a mistyped path
            raise DataError(f"data list {display_path(path)} not found (check the path)")
        raise DataError(
            f"data '{name}' is neither a folder, a .csv list nor a dataset name (known: {known})"
        )
    ds = host.datasets.get(name)(split=split or "test")
    own_preprocess = hasattr(ds, "with_preprocess")
    if preprocess and own_preprocess:
        ds = ds.with_preprocess(preprocess)
    if hasattr(ds, "for_classes"):
        if classes is not UNSET:
            ds = ds.for_classes(classes, label_map, name=f"dataset '{name}'")
        return ds
    if isinstance(ds, Dataset) and label_source(ds) == label_source(None):
        # a plugin's plain Dataset: its labels matched by its class names, as a user's are
        return users_dataset(ds, None if own_preprocess else preprocess, classes, label_map)
    return ds


def as_loader(
    data: Any,
    preprocess: Preprocess | None = None,
    *,
    batch_size: int = 64,
    host: PluginHost | None = None,
    split: str | None = None,
    limit: int | None = None,
    classes: Sequence[str] | None = UNSET,
    label_map: Mapping[str, Any] | str | Path | None = None,
    num_classes: int | None = None,
) -> DataLoader:
    """A DataLoader of (images, labels) batches, in a fixed order (no shuffling).

    ``classes``, ``label_map`` and ``num_classes`` as in :func:`as_dataset`; the loader's
    dataset carries ``classes`` and ``label_source``.
    """
    if isinstance(data, DataLoader):
        return data
    ds = as_dataset(
        data,
        preprocess,
        host=host,
        split=split,
        classes=classes,
        label_map=label_map,
        num_classes=num_classes,
    )
    if limit is not None and limit < len(ds):
        sub = torch.utils.data.Subset(ds, range(limit))
        sub.classes = getattr(ds, "classes", None)  # type: ignore[attr-defined]
        sub.label_source = label_source(ds)  # type: ignore[attr-defined]
        ds = sub
    return DataLoader(ds, batch_size=batch_size, shuffle=False)

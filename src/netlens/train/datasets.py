"""Training data: the train / val / test splits for whatever ``--data`` names, as loaders.

A dataset name (``shapes``, ``fashion-mnist``, ``mnist5k``, or one from a plugin) gives its
``train``/``val``/``test`` splits; a folder gives its ``train/``, ``val/`` and ``test/``
subfolders when it has them (spelled in any case; also ``training/``, ``valid/``,
``validation/``, ``dev/``, ``eval/``, ``testing/``). Without a validation split the model is
validated on a seeded 90/10 holdout of the training images, and ``test/`` is kept for the final
evaluation only. A folder of class subfolders alone is split 90/10 likewise; so is a CSV list
(``path,label`` rows). The val and test splits are labelled by the training split's classes
(matched by folder name, in Unicode's composed form); a class folder the training split lacks is
refused. A ``test/`` of images in no class folder (Kaggle's unlabelled test set) is left out,
with a note. Fewer than two classes with images are refused (:func:`check_classes`). In-memory
array datasets are preprocessed once into tensors.

Unreadable images are not fatal here: :class:`Guarded` hands them back as :class:`Unreadable`
items and :func:`collate` leaves them out of the batch, listing them beside it, so that the
trainer can record them (also from DataLoader worker processes).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, TensorDataset
from torch.utils.data._utils.collate import default_collate

from ..data.items import BAD_ITEM, item_name
from ..data.labels import nfc
from ..data.resolve import ArrayDataset, ImageFolderDataset
from ..errors import DataError
from ..images import IMAGE_SUFFIXES, Preprocess, is_hidden, list_images

if TYPE_CHECKING:
    from ..plugins.manager import PluginHost

__all__ = [
    "EpochShuffle",
    "Guarded",
    "Splits",
    "Unreadable",
    "check_classes",
    "collate",
    "make_loader",
    "resolve_splits",
    "set_epoch",
    "to_tensors",
]

# the split folders a dataset's root may hold, by role, compared case-insensitively (as
# netlens.data.resolve.SPLITS names them)
SPLIT_NAMES = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation", "dev", "eval"),
    "test": ("test", "testing"),
}


@dataclass
class Splits:
    """The datasets a run uses, their class names and the preprocessing the model will get."""

    train: Dataset
    val: Dataset
    test: Dataset | None
    classes: list[str]
    preprocess: Preprocess
    notes: list[str] = field(default_factory=list)  # what was left out of the data, and why


def _named(
    name: str, host: PluginHost, preprocess: Preprocess | None, channels: int | None = None
) -> Splits:
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
    if channels is not None and pre.channels != channels:
        pre = replace(pre, channels=channels)
        preprocess = pre
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


def _split_dirs(root: Path) -> dict[str, Path]:
    """The split folders of ``root`` by role (``train``, ``val``, ``test``); any case."""
    subdirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not is_hidden(d, root)]
    found = {}
    for role, names in SPLIT_NAMES.items():
        hits = [d for d in subdirs if d.name.casefold() in names]
        if len(hits) > 1:
            both = " and ".join(f"{d.name}/" for d in hits)
            raise DataError(f"{root} holds {both}, both a {role} split; keep one of them")
        if hits:
            found[role] = hits[0]
    return found


def _by_train_classes(folder: Path, train: ImageFolderDataset, preprocess: Preprocess) -> Dataset:
    """The val or test split in ``folder``, labelled by the training split's class names."""
    # compared in Unicode's composed form: macOS writes 'été' decomposed (NFD)
    known = {nfc(n) for n in (*train.classes, *train.folder_classes)}
    extra = [
        d.name
        for d in sorted(folder.iterdir())
        if d.is_dir() and not is_hidden(d, folder) and nfc(d.name) not in known and list_images(d)
    ]
    if extra:
        names = ", ".join(extra[:5]) + (", ..." if len(extra) > 5 else "")
        raise DataError(
            f"{folder} has class folder(s) {names} that {train.root} lacks: the model learns "
            f"{train.root.name}/'s classes only; add training images of them or remove them from "
            f"{folder.name}/"
        )
    return ImageFolderDataset(folder, preprocess, classes=train.classes)


def _folder(root: Path, preprocess: Preprocess, seed: int) -> Splits:
    dirs = _split_dirs(root)
    if "train" in dirs:
        train = ImageFolderDataset(dirs["train"], preprocess)
        notes = []
        if "test" in dirs and _unlabelled(dirs["test"]):  # Kaggle's: images to submit scores of
            notes.append(
                f"{dirs['test'].name}/ left out: its images are in no class folder (unlabelled), "
                "so there is no test evaluation"
            )
            del dirs["test"]
        test = _by_train_classes(dirs["test"], train, preprocess) if "test" in dirs else None
        if "val" in dirs:
            val = _by_train_classes(dirs["val"], train, preprocess)
            return Splits(train, val, test, train.classes, preprocess, notes)
        train_part, val = _holdout(train, seed)  # test/ stays for the final evaluation
        return Splits(train_part, val, test, train.classes, preprocess, notes)
    subdirs = [d for d in root.iterdir() if d.is_dir() and not is_hidden(d, root)]
    if dirs and len(dirs) == len(subdirs) and all(_holds_folders(d) for d in subdirs):
        found = ", ".join(f"{d.name}/" for d in dirs.values())
        raise DataError(
            f"{root} holds the splits {found} but no training split: add train/ (class folders "
            "of training images) beside them"
        )
    full = ImageFolderDataset(root, preprocess)
    train_part, val = _holdout(full, seed)
    return Splits(train_part, val, None, full.classes, preprocess)


def _unlabelled(folder: Path) -> bool:
    """Whether ``folder`` holds images directly and no class folder of images (Kaggle's
    ``test/``: the images whose classes a competition asks for)."""
    entries = [e for e in folder.iterdir() if not is_hidden(e, folder)]
    if any(e.is_dir() and list_images(e) for e in entries):
        return False
    return any(e.is_file() and e.suffix.lower() in IMAGE_SUFFIXES for e in entries)


def _holds_folders(folder: Path) -> bool:
    return any(d.is_dir() for d in folder.iterdir())


def resolve_splits(
    data: Any,
    host: PluginHost,
    *,
    preprocess: Preprocess | None = None,
    seed: int = 0,
    channels: int | None = None,
) -> Splits:
    """Train / val / test datasets for ``data`` (a dataset name, folder or ``.csv`` list).

    ``channels``: the model's input channels, when it says (1: grayscale images).
    """
    if isinstance(data, Splits):
        return data
    if not isinstance(data, (str, Path)):
        raise DataError(
            f"train on a dataset name, an image folder or a CSV list, not a {type(data).__name__}"
        )
    path = Path(data)
    pre = preprocess or Preprocess()
    if channels is not None and pre.channels != channels:
        pre = replace(pre, channels=channels)
    if path.suffix.lower() == ".csv" and path.is_file():
        from ..data.csvlist import CsvListDataset

        ds = CsvListDataset(path, pre)
        train_part, val = _holdout(ds, seed)
        return Splits(train_part, val, None, ds.classes, ds.preprocess)
    if path.is_dir():
        return _folder(path, pre, seed)
    if str(data) in host.datasets:
        return _named(str(data), host, preprocess, channels)
    known = ", ".join(host.datasets.names()) or "none registered"
    raise DataError(f"--data '{data}' is neither a folder, a .csv list nor a dataset ({known})")


def check_classes(splits: Splits, data: Any) -> None:
    """Refuse training data with fewer than two classes that have images: cross-entropy over one
    class is 0 from the first step (100% accuracy, nothing learnt)."""
    ds = splits.train
    while isinstance(ds, Subset):
        ds = ds.dataset
    if isinstance(ds, ImageFolderDataset):
        found = list(ds.folder_classes)
    elif hasattr(ds, "labels") and hasattr(ds, "files"):  # a CSV list
        found = [ds.classes[k] for k in sorted(set(np.asarray(ds.labels).tolist()))]
    else:
        found = list(splits.classes)
    if len(found) >= 2:
        return
    has = f"1 class with images ({found[0]}/)" if found else "no class with images"
    where = ""
    if isinstance(ds, ImageFolderDataset) and found:
        inner = ds.root / found[0]
        subs = [d for d in sorted(inner.iterdir()) if d.is_dir() and not is_hidden(d, inner)]
        where = (
            f"; the class folders may be one level down: -d {inner}"
            if len(subs) >= 2
            else "; point -d at the folder that holds one subfolder per class"
        )
    raise DataError(f"{data} has {has}: training needs 2 classes or more{where}")


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


@dataclass
class Unreadable:
    """An item that could not be read: ``"<file>: <reason>"``."""

    line: str


class Guarded(Dataset):
    """``dataset`` with its unreadable items given back as :class:`Unreadable`, not raised
    (a DataLoader worker's exception would come back as a traceback)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        try:
            item = self.dataset[i]
        except BAD_ITEM as exc:
            return Unreadable(f"{item_name(self.dataset, i)}: {' '.join(str(exc).split())}")
        return item[0], item[1]


def collate(batch: list[Any]) -> tuple[Any, Any, list[str]]:
    """``(images, labels, unreadable)``: the readable items batched, the others' lines listed
    (images and labels are None when no item of the batch could be read)."""
    bad = [b.line for b in batch if isinstance(b, Unreadable)]
    kept = [b for b in batch if not isinstance(b, Unreadable)]
    if not kept:
        return None, None, bad
    x, y = default_collate(kept)
    return x, y, bad


class EpochShuffle(Sampler[int]):
    """The order of ``n`` items in epoch :attr:`epoch`: a permutation drawn from
    ``(seed, epoch)`` alone.

    Nothing else draws from it (not the DataLoader's worker seeds, not an earlier epoch), so a
    run resumed after epoch E shuffles epoch E+1 as the uninterrupted run does, whatever the
    number of workers.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Any:
        rng = np.random.default_rng([self.seed & (2**64 - 1), self.epoch])
        return iter(rng.permutation(self.n).tolist())

    def __len__(self) -> int:
        return self.n


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Shuffle ``loader`` (from :func:`make_loader`, or cut per rank) for ``epoch``."""
    part: Any = loader.batch_sampler
    while part is not None and not hasattr(part, "set_epoch"):
        part = getattr(part, "batches", None) or getattr(part, "sampler", None)
    if part is not None:
        part.set_epoch(epoch)


def make_loader(
    ds: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    workers: int,
    pin: bool,
    seed: int = 0,
    drop_single: bool = False,
) -> DataLoader:
    """A DataLoader of ``(images, labels, unreadable)`` batches (see :func:`collate`); array
    datasets become tensors first (no workers needed for those).

    ``shuffle``: each epoch's order comes from ``(seed, epoch)`` (:class:`EpochShuffle`; the
    trainer calls :func:`set_epoch`); ``seed`` also seeds the workers' base seed, apart.
    ``drop_single``: leave out a last batch of one image (BatchNorm cannot train on it); other
    last batches are kept.
    """
    if isinstance(ds, ArrayDataset):
        ds, workers = to_tensors(ds), 0
    gen = torch.Generator().manual_seed(seed)  # the workers' base seed only
    n = len(ds)  # type: ignore[arg-type]
    return DataLoader(
        Guarded(ds),
        batch_size=batch_size,
        sampler=EpochShuffle(n, seed) if shuffle else None,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=workers > 0,
        generator=gen,
        collate_fn=collate,
        drop_last=drop_single and n > batch_size and n % batch_size == 1,
    )

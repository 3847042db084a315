"""Training data: the train / val / test splits for whatever ``--data`` names, as loaders.

A dataset name (``shapes``, ``fashion-mnist``, ``mnist5k``, or one from a plugin) gives its
``train``/``val``/``test`` splits; a folder gives its ``train/``, ``val/`` and ``test/``
subfolders when it has them (spelled in any case; also ``training/``, ``valid/``,
``validation/``, ``dev/``, ``eval/``, ``testing/``). Without a validation split the model is
validated on a seeded 90/10 holdout of the training images, and ``test/`` is kept for the final
evaluation only. A folder of class subfolders alone is split 90/10 likewise; so is a CSV list
(``path,label`` rows). The val and test splits are labelled by the training split's classes
(matched by folder name as netlens matches class names: in any Unicode form, then ignoring case
and separators); a class folder the training split lacks is refused. A ``test/`` of images in no
class folder (Kaggle's unlabelled test set) is left out, with a note. Fewer than two classes
with images are refused (:func:`check_classes`). ``--img-size`` changes a named dataset's image
size only (its channels, mean and std stay); 1-channel images for a model built for 3 channels
are fed as 3 identical ones (:func:`gray_as_rgb`). In-memory array datasets are preprocessed
once into tensors.

Unreadable images are not fatal here: :class:`Guarded` hands them back as :class:`Unreadable`
items and :func:`collate` leaves them out of the batch, listing them beside it, so that the
trainer can record them (also from DataLoader worker processes).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, TensorDataset
from torch.utils.data._utils.collate import default_collate

from ..data.items import BAD_ITEM, item_name
from ..data.labels import find_name, normalize_name
from ..data.resolve import ArrayDataset, ImageFolderDataset, split_folders
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
    "gray_as_rgb",
    "make_loader",
    "resolve_splits",
    "set_epoch",
    "to_tensors",
]


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
    own = getattr(train, "preprocess", None)
    if preprocess is not None and own is not None and only_size(preprocess):
        preprocess = replace(own, size=preprocess.size)  # --img-size: the dataset's channels,
        # mean and std kept
    pre = preprocess or own or Preprocess()
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


def only_size(preprocess: Preprocess) -> bool:
    """``preprocess`` is netlens' defaults but for its size: what ``--img-size`` alone gives
    (``Preprocess(size=...)``), so a dataset's own channels and mean/std stay."""
    return replace(preprocess, size=Preprocess().size) == Preprocess()


def _holdout(ds: Dataset, seed: int, fraction: float = 0.1) -> tuple[Dataset, Dataset]:
    order = np.random.default_rng(seed).permutation(len(ds))
    k = max(1, int(len(ds) * fraction))
    return Subset(ds, order[k:].tolist()), Subset(ds, order[:k].tolist())


def _by_train_classes(folder: Path, train: ImageFolderDataset, preprocess: Preprocess) -> Dataset:
    """The val or test split in ``folder``, labelled by the training split's class names,
    matched as netlens matches class names everywhere (:func:`~netlens.data.labels.find_name`:
    exactly, in any Unicode form, then ignoring case and separators: ``Camera_Man/`` is
    ``camera man/``). Refused in one line: a class folder train/ lacks, one that names two of
    its classes alike, and two that name the same one."""
    model = list(train.classes)
    extra, taken = [], {}
    for d in sorted(folder.iterdir()):
        if not d.is_dir() or is_hidden(d, folder) or not list_images(d):
            continue
        k = find_name(d.name, model)
        if k is None:
            alike = [c for c in model if normalize_name(c) == normalize_name(d.name)]
            if len(alike) > 1:
                raise DataError(
                    f"{folder.name}/{d.name}/ could be {train.root.name}/'s class "
                    f"{' or '.join(repr(c) for c in alike)} (their names differ only in case or "
                    f"separators); rename {d.name}/ to one of them exactly"
                )
            extra.append(d.name)
        elif k in taken:
            raise DataError(
                f"{folder} has {taken[k]}/ and {d.name}/, both {train.root.name}/'s class "
                f"'{model[k]}'; merge them into one folder"
            )
        else:
            taken[k] = d.name
    if extra:
        names = ", ".join(extra[:5]) + (", ..." if len(extra) > 5 else "")
        raise DataError(
            f"{folder} has class folder(s) {names} that {train.root} lacks: the model learns "
            f"{train.root.name}/'s classes only; add training images of them or remove them from "
            f"{folder.name}/"
        )
    return ImageFolderDataset(folder, preprocess, classes=train.classes)


def _folder(root: Path, preprocess: Preprocess, seed: int) -> Splits:
    dirs = split_folders(root)
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


def gray_as_rgb(splits: Splits) -> bool:
    """Feed ``splits``' 1-channel images to a model that takes 3 channels: each image's gray
    replicated to 3 channels, the mean and std likewise, so every channel holds what the one
    did (``splits`` changed in place; its ``preprocess``, which the checkpoint records, says
    so). False, and ``splits`` as it was, when a dataset carries no preprocessing to change."""
    pre = splits.preprocess
    mean, std = pre.statistics(3) if pre.mean is not None else (None, None)
    three = replace(pre, channels=3, mean=mean, std=std)
    old = (splits.train, splits.val, splits.test)
    parts = [_preprocessed(ds, three) if ds is not None else None for ds in old]
    if any(new is None and ds is not None for new, ds in zip(parts, old, strict=True)):
        return False
    splits.train, splits.val, splits.test = parts  # type: ignore[assignment]
    splits.preprocess = three
    return True


def _preprocessed(ds: Dataset, pre: Preprocess) -> Dataset | None:
    """``ds`` preprocessed with ``pre`` (a Subset: its dataset), or None when it cannot be."""
    if isinstance(ds, Subset):
        inner = _preprocessed(ds.dataset, pre)
        return None if inner is None else Subset(inner, ds.indices)
    if hasattr(ds, "with_preprocess"):
        return ds.with_preprocess(pre)
    if isinstance(getattr(ds, "preprocess", None), Preprocess):  # a folder or a CSV list
        new = copy.copy(ds)
        new.preprocess = pre  # type: ignore[attr-defined]
        return new
    return None


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
    gray_to_rgb = imgs.shape[3] == 1 and pre.channels == 3  # replicated, as pre(img) does
    same = imgs.shape[3] == pre.channels or gray_to_rgb
    plain = pre.function is None and pre.engine == "netlens" and pre.channel_order == "rgb"
    if tuple(imgs.shape[1:3]) == tuple(pre.size) and same and plain:
        x = torch.from_numpy(imgs.copy()).permute(0, 3, 1, 2).float().div_(255.0)
        x = x.repeat(1, 3, 1, 1) if gray_to_rgb else x
        mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in pre.statistics(pre.channels))
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

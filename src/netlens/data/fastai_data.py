"""fastai's data objects as netlens data: ``learn.dls`` (its validation set), a fastai
DataLoader (``learn.dls.valid``, ``dls.test_dl(files, with_labels=True)``) and fastai
``Datasets`` (``learn.dls.valid_ds``).

netlens reads each item as fastai reads it, ``dl.dataset[i]``: the type transforms only (the
image opened by ``PILImage.create``, the label as its index into ``dls.vocab``), not the
DataLoader's item and batch transforms. The image is then preprocessed as the model's images
are: for ``netlens.load(learn)`` that is fastai's own validation pipeline, so the model sees
what ``learn.get_preds(dl=...)`` gives it; for another model, that model's preprocessing. The
labels are matched to the model's classes by the vocabulary's names. fastai is not imported
here: its objects are recognised by their classes' names.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .labels import UNSET

__all__ = ["FastaiItems", "fastai_items", "is_fastai_data", "model_classes"]

_KINDS = {"DataLoaders", "DataLoader", "TfmdDL", "Datasets"}


def is_fastai_data(obj: Any) -> bool:
    """True for fastai's ``DataLoaders``, ``DataLoader`` (``TfmdDL``) and ``Datasets``."""
    return any(
        c.__module__.split(".")[0] == "fastai" and c.__name__ in _KINDS for c in type(obj).__mro__
    )


def _kind(obj: Any) -> str:
    return next(c.__name__ for c in type(obj).__mro__ if c.__name__ in _KINDS)


def fastai_items(obj: Any, *, labelled: bool, label_source: str | None = None) -> Dataset:
    """The items of fastai data ``obj`` as a Dataset of ``(image, label)``, the image as
    fastai opens it (a PIL image, not yet preprocessed). ``learn.dls`` means its validation
    set. ``labelled``: each item needs its label (an index into ``classes``, the vocabulary);
    otherwise every label is -1 and data without labels (``dls.test_dl(files)``) is fine. A
    fastai DataLoader over a torch Dataset gives that Dataset."""
    kind = _kind(obj)
    if kind == "DataLoaders":
        loaders = list(getattr(obj, "loaders", None) or [])
        if len(loaders) < 2 or len(loaders[1].dataset) == 0:
            raise DataError(
                "these fastai DataLoaders have no validation set; pass the DataLoader to use "
                "(dls.train, dls.test_dl(files, with_labels=True))"
            )
        obj = loaders[1]
        kind = _kind(obj)
    if kind in ("DataLoader", "TfmdDL"):
        obj = obj.dataset
        if isinstance(obj, Dataset):
            return obj  # a fastai DataLoader over a torch Dataset: that Dataset
        if not is_fastai_data(obj) or _kind(obj) != "Datasets":
            raise DataError(
                f"this fastai DataLoader holds a {type(obj).__name__}, not fastai Datasets; "
                "pass its items as a torch Dataset or an (images, labels) pair"
            )
    return FastaiItems(obj, labelled=labelled, label_source=label_source)


class FastaiItems(Dataset):
    """fastai ``Datasets`` as ``(image, label)`` items: the image as fastai opens it, the label
    its index into the vocabulary (``classes``), or -1 for every item when not ``labelled``.
    """

    def __init__(self, ds: Any, *, labelled: bool, label_source: str | None = None) -> None:
        inputs = getattr(ds, "n_inp", 1)
        if inputs != 1:
            raise DataError(
                f"these fastai Datasets give {inputs} inputs per item; netlens reads one image"
            )
        self.dataset, self.labelled = ds, labelled
        self.labels: list[int] | None = None
        if labelled:
            names = _vocab(ds)
            if names:
                self.classes = names
            tls = list(getattr(ds, "tls", None) or [])
            first = ds[0] if not tls and len(ds) > 0 else None
            if len(tls) == 1 or (first is not None and len(first) < 2):
                raise DataError(
                    "this fastai data has no labels (dls.test_dl(files) makes none); pass "
                    "learn.dls.valid or dls.test_dl(files, with_labels=True)"
                )
            if tls:  # every label, read without its image: one line for any that is no class
                self.labels = [self._label(tls[1][i], i) for i in range(len(ds))]
        self.label_source = label_source or "fastai's labels, by dls.vocab"

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        item = self.dataset[int(i)]
        if not self.labelled:
            return item[0], -1
        return item[0], self.labels[i] if self.labels is not None else self._label(item[1], i)

    def _label(self, label: Any, i: int) -> int:
        """Item ``i``'s fastai label as a class index: a category's index, or a one-hot
        multi-category row marking one class; a number (regression) or a row marking none or
        several classes is one line."""
        value = torch.as_tensor(np.asarray(label))
        if value.dim() == 1 and bool(((value == 0) | (value == 1)).all()):
            marked = int(value.sum())
            if marked != 1:
                raise DataError(
                    f"fastai's label of item {i} marks {marked} classes: netlens reads one "
                    "class per image (single-label data, a CategoryBlock)"
                )
            return int(value.argmax())
        if value.dim() != 0 or value.is_floating_point():
            kind = "numbers" if value.dim() == 0 else f"shaped {tuple(value.shape)}"
            raise DataError(
                f"fastai's labels are {kind}, not categories; netlens reads one class per image"
            )
        return int(value)


def _vocab(ds: Any) -> list[str] | None:
    """The class names the labels index (``dls.vocab``), as strings; None without one."""
    try:
        vocab = ds.vocab
    except Exception:  # noqa: BLE001 - fastai's GetAttr: no labels, no vocabulary
        return None
    if vocab is None or isinstance(vocab, (str, bytes)) or not hasattr(vocab, "__len__"):
        return None
    names = [str(v) for v in vocab]
    return names or None


def model_classes(classes: Any) -> Any:
    """The classes to match fastai's vocabulary to: none when no model is involved (UNSET), so
    labels keep the vocabulary's order rather than the names' sorted order."""
    return None if classes is UNSET else classes

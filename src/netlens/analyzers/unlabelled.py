"""Data for analyzers and metrics that read no labels: any images, labelled or not.

``stats`` and ``top-activations`` look at activations only; ablation's ``prob``, ``kl`` and
``agreement`` compare the ablated model with the intact one. Labels are never read, so data the
label checks would refuse is fine: a folder of images with no class
subfolders, a folder or CSV whose class names the model does not know, image tensors without
labels, an ``(images, labels)`` pair with labels outside the model's classes, fastai data without
labels (``dls.test_dl(files)``). Folders of class subfolders and CSV lists keep their own labels,
unmatched (nobody reads them); other images carry the label -1 ("unknown"); a dataset name or a
Dataset is used as it is. Image tensors of pixels (uint8) are preprocessed as the model's images,
as they are in a Dataset; float ones are taken as preprocessed already.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.fastai_data import is_fastai_data
from ..data.resolve import fastai_dataset, sized
from ..errors import DataError
from ..images import IMAGE_SUFFIXES, as_pixels, first_readable, is_hidden, list_images, read_image

if TYPE_CHECKING:
    from ..lens import Lens

__all__ = ["LABEL_SOURCE", "describe", "unlabelled_data"]

#: What the run header says about labels nobody reads (an analyzer may say more).
LABEL_SOURCE = "not used"


class ImageFiles(Dataset):
    """Image files, preprocessed on access, each with the label -1."""

    def __init__(self, files: list[Path], preprocess: Any) -> None:
        if not files:
            raise DataError(f"no images found ({', '.join(IMAGE_SUFFIXES)})")
        self.files = files
        self.preprocess = sized(preprocess, lambda: first_readable(files))
        self.label_source = LABEL_SOURCE

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.preprocess(read_image(self.files[i])), -1


class ImageTensors(Dataset):
    """Image tensors (N×C×H×W), each with the label -1: float ones preprocessed already,
    pixels (uint8) preprocessed on access with ``preprocess``, as a Dataset's are."""

    def __init__(self, images: torch.Tensor, preprocess: Any = None) -> None:
        self.images = images
        pixels = preprocess is not None and len(images) > 0 and not images.is_floating_point()
        self.preprocess = sized(preprocess, lambda: as_pixels(images[0].cpu())) if pixels else None
        self.label_source = LABEL_SOURCE

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self.preprocess is None:
            return self.images[i], -1
        return self.preprocess(as_pixels(self.images[i].cpu())), -1


def unlabelled_data(lens: Lens, inputs: Any) -> Any:
    """``inputs`` as data whose labels nobody reads (see the module doc).

    fastai's data is read as :func:`netlens.data.resolve.fastai_dataset` reads it. A
    DataLoader, a Dataset, a dataset name and None (the model card's dataset) are returned
    as they are, for the template to resolve.
    """
    if isinstance(inputs, torch.Tensor):
        return ImageTensors(inputs, lens.transform)
    if isinstance(inputs, tuple) and len(inputs) in (2, 3):
        return ImageTensors(torch.as_tensor(inputs[0]), lens.transform)
    if is_fastai_data(inputs):  # learn.dls (its validation set), learn.dls.valid, valid_ds
        return fastai_dataset(inputs, lens.transform, labelled=False, label_source=LABEL_SOURCE)
    path = Path(inputs) if isinstance(inputs, (str, Path)) else None
    folder = path is not None and path.is_dir()
    if folder and not any(p.is_dir() and not is_hidden(p, path) for p in path.iterdir()):
        return ImageFiles(list_images(path), lens.transform)
    if path is not None and (path.is_dir() or path.suffix.lower() == ".csv"):
        from ..data import as_dataset

        return as_dataset(path, lens.transform, host=lens.host, split="test")  # its own labels
    if isinstance(inputs, (Dataset, DataLoader, str, Path)) or inputs is None:
        return inputs
    from ..data.items import hub_rows

    if hub_rows(inputs) is not None:  # a Hugging Face datasets.Dataset: resolved as data
        return inputs
    raise DataError(
        f"cannot use a {type(inputs).__name__} as data; pass a folder, a .csv list, a dataset "
        "name, a Dataset, a DataLoader, image tensors or an (images, labels) pair"
    )


def describe(inputs: Any) -> str | None:
    """Where images turned into data here came from (None: not turned here)."""
    if isinstance(inputs, torch.Tensor):
        return f"{len(inputs)} image tensors"
    if isinstance(inputs, tuple) and len(inputs) in (2, 3):
        return f"{len(inputs[0])} image tensors (labels not used)"
    path = Path(inputs) if isinstance(inputs, (str, Path)) else None
    if path is not None and path.is_dir():
        return f"folder {path}"
    if path is not None and path.suffix.lower() == ".csv":
        return f"CSV list {path}"
    return None

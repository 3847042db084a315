"""Datasets: image folders, CSV lists, arrays, tensor pairs and named datasets from plugins.

Everything that takes ``data`` goes through :func:`as_dataset` / :func:`as_loader`: a folder with
class subfolders, a ``.csv`` list, a dataset name (``fashion-mnist``, ``shapes``...), a
``Dataset`` or ``DataLoader``, or an ``(images, labels)`` pair. Given the model's ``classes``,
folder names and CSV labels are matched to them by name (see :mod:`netlens.data.labels`); every
dataset says how in ``label_source``.
"""

from .labels import read_class_names, read_label_map
from .resolve import ArrayDataset, ImageFolderDataset, as_dataset, as_loader, label_source

__all__ = [
    "ArrayDataset",
    "ImageFolderDataset",
    "as_dataset",
    "as_loader",
    "label_source",
    "read_class_names",
    "read_label_map",
]

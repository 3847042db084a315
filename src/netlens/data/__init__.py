"""Datasets: image folders, arrays, tensor pairs and named datasets from plugins.

Everything that takes ``data`` goes through :func:`as_dataset` / :func:`as_loader`: a folder with
class subfolders, a dataset name (``fashion-mnist``, ``shapes``...), a ``Dataset`` or
``DataLoader``, or an ``(images, labels)`` pair.
"""

from .resolve import ArrayDataset, ImageFolderDataset, as_dataset, as_loader

__all__ = ["ArrayDataset", "ImageFolderDataset", "as_dataset", "as_loader"]

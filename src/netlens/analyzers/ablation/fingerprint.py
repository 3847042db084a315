"""A fingerprint of the data a study runs on, so a resume on other data is refused.

Cheap by design: image files are never read. A folder or CSV list counts by its items (each
file's path with its label, in order); images held in memory (an ``(images, labels)`` pair, a
named dataset's array) by their bytes, or, past :data:`WHOLE_BYTES`, by their shape, dtype and
an evenly spread sample of them. A user's Dataset counts by what it exposes (torchvision's
``samples``/``targets``/``data``, a Subset's indices, a Hugging Face dataset's own fingerprint)
and its length; wrappers (relabelling, preprocessing) by their label tables and what they wrap.

That misses a user's Dataset that keeps its items under other names (``self.paths``), so the
images themselves count too, as the study reads them anyway: :func:`batch_digest` hashes each
batch's preprocessed input tensor and labels in the baseline pass, :func:`images_digest` the
batches' digests in data order (the same for any number of processes), kept with the intact
model's row and compared before a resumed row is kept.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["batch_digest", "data_fingerprint", "images_digest"]

#: Arrays up to this size are hashed whole; bigger ones by a sample of about this size.
WHOLE_BYTES = 64 << 20

# the attributes that say what a dataset holds (never properties that read files)
_ITEMS = (
    "items",  # ImageFolderDataset: (path, label)
    "files",  # CsvListDataset
    "samples",  # torchvision DatasetFolder / ImageFolder: (path, class index)
    "images",
    "data",  # torchvision CIFAR / MNIST
    "x",
    "tensors",  # TensorDataset
    "labels",
    "targets",
    "y",
    "indices",  # Subset
    "to_model",  # a user's class indices as the model's
    "keys",
    "classes",
    "label_map",
    "_fingerprint",  # a Hugging Face datasets.Dataset
)
_WRAPPED = ("dataset", "rows")  # what a wrapper (Subset, relabelling, preprocessing) wraps
_PRIMITIVE = (str, int, float, bool, type(None), Path)


def data_fingerprint(data: Any) -> str:
    """SHA-256 of the items (paths or tensors) and labels of ``data`` (a run's
    :class:`~netlens.analyzers.inputs.Data`), in their order."""
    h = hashlib.sha256()
    _dataset(h, getattr(data, "dataset", data), depth=0)
    order = getattr(data, "_order", None)  # a given DataLoader's sampler order
    if order is not None:
        _value(h, order)
    return h.hexdigest()


def batch_digest(x: torch.Tensor, labels: Any) -> bytes:
    """SHA-256 of one batch as the model gets it: the input tensor's shape, dtype and bytes,
    and its labels (None, a tensor, a list)."""
    h = hashlib.sha256(f"{tuple(x.shape)}{x.dtype}".encode())
    a = x.detach().cpu().contiguous()
    if a.dtype == torch.bfloat16:  # numpy has no bfloat16: its bits as int16
        a = a.view(torch.int16)
    h.update(memoryview(np.ascontiguousarray(a.numpy())).cast("B"))  # every byte, no copy
    _value(h, labels)
    return h.digest()


def images_digest(digests: list[bytes]) -> str:
    """SHA-256 of the batches' digests, in data order: the images and labels a study read."""
    h = hashlib.sha256(f"{len(digests)} batches".encode())
    for d in digests:
        h.update(d)
    return h.hexdigest()


def _dataset(h: Any, ds: Any, depth: int) -> None:
    h.update(f"<{type(ds).__module__}.{type(ds).__qualname__}>".encode())
    try:
        h.update(f"len={len(ds)}".encode())
    except TypeError:
        pass
    own = vars(ds) if hasattr(ds, "__dict__") else {}
    for name in _ITEMS:
        if name in own:
            h.update(f"|{name}=".encode())
            _value(h, own[name])
    for name in _WRAPPED:
        inner = own.get(name)
        if inner is not None and inner is not ds and depth < 8:
            h.update(f"|{name}:".encode())
            _dataset(h, inner, depth + 1)


def _value(h: Any, value: Any) -> None:
    """Feed one attribute: arrays by their bytes (or a sample), lists item by item,
    primitives as text; other objects by their type only (their repr may hold addresses)."""
    if isinstance(value, np.ndarray) and value.dtype == object:
        _value(h, value.tolist())
    elif isinstance(value, (torch.Tensor, np.ndarray)):
        try:
            _array(h, value)
        except (RuntimeError, TypeError, ValueError):  # sparse, meta, no numpy dtype...
            h.update(b"<unreadable array>")
    elif isinstance(value, _PRIMITIVE):
        h.update(f"{type(value).__name__}:{value}\x00".encode())
    elif isinstance(value, (list, tuple, range)):
        if _flat(value):
            h.update(json.dumps([str(v) for v in value]).encode())
        elif value and isinstance(value[0], (list, tuple)) and _flat_pairs(value):
            h.update(json.dumps([[str(p) for p in v] for v in value]).encode())
        else:
            h.update(f"[{len(value)}:".encode())
            for v in value[:100_000]:
                _value(h, v)
            h.update(b"]")
    elif isinstance(value, dict):
        h.update(json.dumps({str(k): str(v) for k, v in value.items()}, sort_keys=True).encode())
    else:
        h.update(f"<{type(value).__qualname__}>".encode())


def _flat(values: Any) -> bool:
    return all(isinstance(v, _PRIMITIVE) for v in values)


def _flat_pairs(values: Any) -> bool:
    return all(isinstance(v, (list, tuple)) and _flat(v) for v in values)


def _array(h: Any, a: torch.Tensor | np.ndarray) -> None:
    """An array's shape and dtype, and its bytes: all of them, or evenly spaced rows."""
    h.update(f"{type(a).__name__}{tuple(a.shape)}{a.dtype}".encode())
    if isinstance(a, torch.Tensor):
        a = a.detach()
    n = a.shape[0] if a.ndim else 1
    nbytes = a.numel() * a.element_size() if isinstance(a, torch.Tensor) else a.nbytes
    if nbytes > WHOLE_BYTES and n > 1:
        rows = np.linspace(0, n - 1, max(1, int(n * WHOLE_BYTES / nbytes))).round()
        if isinstance(a, torch.Tensor):
            a = a[torch.as_tensor(rows, dtype=torch.long, device=a.device)]
        else:
            a = a[rows.astype(np.int64)]
    if isinstance(a, torch.Tensor):
        a = a.cpu().contiguous()
        if a.dtype == torch.bfloat16:  # numpy has no bfloat16: its bits as int16
            a = a.view(torch.int16)
        a = a.numpy()
    h.update(np.ascontiguousarray(a).tobytes())

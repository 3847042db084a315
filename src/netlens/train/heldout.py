"""The images a trained model was not trained on: recorded by the trainer, used by analyses.

A run records (:func:`data_record`) the absolute path of a local data folder or CSV list (a
named dataset such as ``shapes`` stays a name: analyses use its test split) and where its
held-out images are: the ``test/`` or ``val/`` folder of a split root, or, when validation was
carved out of the training images (the seeded 90/10 holdout), the held-out files themselves,
relative to the data root, with their classes. :func:`default_data` (``Lens.default_data``)
gives those images to commands given no data, saying so; when only the training images are on
the card (an older checkpoint) it gives them with one warning that the model was trained on
them. :func:`file_lists` sums up a run's train and validation files for ``--resume`` to
compare (:mod:`.resume`).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import Subset

from ..data.csvlist import ListedImages
from ..data.labels import _closest, find_name, nfc
from ..errors import DataError, NetlensWarning
from ..images import first_readable
from ..naming import display_path

if TYPE_CHECKING:
    from ..lens import Lens
    from .datasets import Splits

__all__ = ["HeldOut", "data_record", "default_data", "file_lists", "split_files"]

_TEST = ("test", "testing")
_VAL = ("val", "valid", "validation", "dev", "eval")
_NAMES_KEPT = 50_000  # file lists this long or shorter are kept whole in a resume state


def local_root(data: Any) -> Path | None:
    """The folder the files of local ``data`` are relative to (the folder itself, or the CSV
    list's folder), resolved; None for a dataset name."""
    path = Path(str(data)).expanduser()
    if path.suffix.lower() == ".csv" and path.is_file():
        return path.resolve().parent
    return path.resolve() if path.is_dir() else None


def split_files(ds: Any) -> list[tuple[str, int, str]] | None:
    """The (absolute file, class index, class name) items of a split, in its order (a folder's
    or a CSV list's, through a Subset); None when its items are not files (a named dataset)."""
    indices: list[int] | None = None
    while isinstance(ds, Subset):
        idx = [int(i) for i in ds.indices]
        indices = idx if indices is None else [idx[i] for i in indices]
        ds = ds.dataset
    classes = list(getattr(ds, "classes", None) or [])
    if isinstance(getattr(ds, "items", None), list):  # an image folder: (path, label)
        rows = [(p, int(k)) for p, k in ds.items]
    elif isinstance(getattr(ds, "files", None), list) and hasattr(ds, "labels"):  # a CSV list
        rows = [(p, int(k)) for p, k in zip(ds.files, np.asarray(ds.labels).tolist(), strict=True)]
    else:
        return None
    if indices is not None:
        rows = [rows[i] for i in indices]
    return [
        (os.path.abspath(p), k, classes[k] if 0 <= k < len(classes) else str(k)) for p, k in rows
    ]


def _relative(path: str, root: Path) -> str:
    """``path`` relative to ``root`` (``/`` separated); absolute where it is on another drive."""
    try:
        return Path(os.path.relpath(path, os.path.abspath(root))).as_posix()
    except ValueError:
        return path


def data_record(data: Any, splits: Splits) -> dict[str, Any]:
    """What a run's record says of its data: ``data`` (an absolute path when local) and
    ``heldout`` (where the images it was not trained on are; None when there are none)."""
    root = local_root(data)
    if root is None:  # a dataset name: analyses use its test split
        return {"data": str(data), "heldout": None}
    path = Path(str(data)).expanduser().resolve()
    for split, ds in (("test", splits.test), ("validation", splits.val)):
        folder = getattr(ds, "root", None)  # a split folder of the root (test/, val/)
        if isinstance(folder, Path) and ds is not None:
            return {
                "data": str(path),
                "heldout": {"split": split, "n": len(ds), "folder": str(folder.resolve())},
            }
    files = split_files(splits.val) if isinstance(splits.val, Subset) else None
    if not files:
        return {"data": str(path), "heldout": None}
    return {
        "data": str(path),
        "heldout": {
            "split": "validation",
            "n": len(files),
            "root": str(root),
            "files": [[_relative(f, root), k, name] for f, k, name in files],
        },
    }


def file_lists(splits: Splits, data: Any) -> dict[str, Any] | None:
    """A run's training and validation files, summed up for ``--resume``: per split its count,
    a SHA-256 of its (file, class) items in order and, for lists up to 50,000, the files."""
    root = local_root(data)
    if root is None:
        return None
    out: dict[str, Any] = {}
    for name, ds in (("train", splits.train), ("val", splits.val)):
        files = split_files(ds)
        if files is None:
            return None
        rows = [f"{_relative(f, root)}\t{cls}" for f, _, cls in files]
        digest = hashlib.sha256("\n".join(rows).encode("utf-8", "surrogateescape")).hexdigest()
        kept = [r.split("\t")[0] for r in rows] if len(rows) <= _NAMES_KEPT else None
        out[name] = {"n": len(rows), "sha256": digest, "files": kept}
    return out


def file_list_change(before: dict[str, Any], now: dict[str, Any]) -> str | None:
    """What changed between two :func:`file_lists` (None: nothing), in a few words."""
    said = []
    for split in ("train", "val"):
        a, b = before.get(split) or {}, now.get(split) or {}
        if a.get("sha256") == b.get("sha256"):
            continue
        part = f"{split} {a.get('n')} → {b.get('n')} images"
        old, new = a.get("files"), b.get("files")
        if old is not None and new is not None:
            added = [f for f in new if f not in set(old)]
            gone = [f for f in old if f not in set(new)]
            if added:
                part += f", new: {', '.join(added[:3])}" + (", ..." if len(added) > 3 else "")
            if gone:
                part += f", gone: {', '.join(gone[:3])}" + (", ..." if len(gone) > 3 else "")
            if not added and not gone:
                part += ", the same files in another order or with other classes"
        said.append(part)
    return "; ".join(said) or None


class HeldOut(ListedImages):
    """Recorded image files with their labels (the held-out validation images of a run).

    Attributes:
        files, labels, classes, label_source, preprocess: as a CSV list's.
        description: what the images are, for the line naming the data.
    """

    def __init__(
        self,
        files: list[Path],
        labels: list[int],
        classes: list[str],
        preprocess: Any,
        description: str,
        root: Path | None = None,
    ) -> None:
        from ..data.user_datasets import sized

        self.root = root  # the data folder the files were recorded relative to (None: a CSV's)
        self.files = files
        self.labels = np.asarray(labels, np.int64)
        self.classes = classes
        self.label_source = "the classes recorded with the held-out images on the model card"
        self.description = description
        self.preprocess = sized(preprocess, lambda: first_readable(self.files))

    @property
    def items(self) -> list[tuple[Path, int]]:
        """(file, label) pairs, as an image folder's (``evaluate`` reads masks by them)."""
        return [(Path(f), int(k)) for f, k in zip(self.files, self.labels.tolist(), strict=True)]

    def __str__(self) -> str:
        return self.description

    __repr__ = __str__


def default_data(lens: Lens) -> Any:
    """The data a command given none uses (``Lens.default_data``): a dataset name, a folder,
    the held-out images (:class:`HeldOut`), or None when the card names no data."""
    card = lens.card or {}
    if card.get("data"):  # a zoo card's dataset
        return card["data"]
    record = card.get("record") or {}
    data = record.get("data")
    if not data:
        return None
    heldout = record.get("heldout")
    _check_heldout(heldout)
    if heldout and heldout.get("folder"):
        split = heldout.get("split") or "held-out"
        return str(_existing(Path(heldout["folder"]), f"{split} folder"))
    if heldout and heldout.get("files"):
        return _holdout(lens, heldout, str(data).lower().endswith(".csv"))
    path = Path(str(data)).expanduser()
    if not path.exists():
        if path.is_absolute():
            _existing(path, "training data")
        return str(data)  # a dataset name: its test split
    if path.is_dir():
        split = _split_folder(path)
        if split is not None:  # a split root (train/ + test/ or val/): never trained on
            return str(split)
    _warn_trained_on(lens, path)
    return str(data)


def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(
            f"the model's {what} {display_path(path)} (on its card) is not there: moved or "
            "deleted? put it back, or give the data to use (--data)"
        )
    return path


def _split_folder(root: Path) -> Path | None:
    """The ``test/`` (else ``val/``) folder of a split root, in any case; None if none."""
    try:
        subdirs = [d for d in sorted(root.iterdir()) if d.is_dir()]
    except OSError:
        return None
    if not any(d.name.casefold() in ("train", "training") for d in subdirs):
        return None
    for names in (_TEST, _VAL):
        hits = [d for d in subdirs if d.name.casefold() in names]
        if hits and any(e.is_dir() for e in hits[0].iterdir()):
            return hits[0]
    return None


def _damaged(why: str) -> DataError:
    return DataError(
        f"the model card's held-out record is damaged ({why}); give the data to use "
        "(--data FOLDER or a .csv list)"
    )


def _check_heldout(heldout: Any) -> None:
    """Refuse a ``record["heldout"]`` not of the shape :func:`data_record` writes (a card
    edited by hand, or damaged), in one line."""
    if not heldout:
        return
    if not isinstance(heldout, dict):
        raise _damaged(f"a {type(heldout).__name__}, not a mapping")
    if not isinstance(heldout.get("split", ""), str):
        raise _damaged("its split is not a name")
    if heldout.get("folder"):
        if not isinstance(heldout["folder"], str):
            raise _damaged("its folder is not a path")
        return
    if not heldout.get("files"):
        return
    files = heldout["files"]
    if not isinstance(heldout.get("root"), str) or not heldout["root"]:
        raise _damaged("its files have no data folder (root) path")
    if not isinstance(files, list):
        raise _damaged(f"its files are a {type(files).__name__}, not a list")
    for entry in files:
        ok = isinstance(entry, (list, tuple)) and len(entry) == 3
        rel, index, name = entry if ok else (None, None, None)
        if not (
            ok
            and isinstance(rel, str)
            and rel
            and isinstance(index, int)
            and not isinstance(index, bool)
            and index >= 0
            and isinstance(name, str)
        ):
            raise _damaged(f"entry {str(entry)[:80]} is not [file, class index, class name]")


def _inside(root: Path, rel: str) -> bool:
    """Whether ``root / rel`` lies in ``root``: written below it (no ``..``, not absolute), or
    leading back into it (a data folder given through a symlink is recorded so)."""
    parts = Path(rel).parts
    if not Path(rel).is_absolute() and not Path(rel).drive and ".." not in parts:
        return True
    try:
        (root / rel).resolve().relative_to(root.resolve())
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def _holdout(lens: Lens, heldout: dict[str, Any], csv_list: bool) -> HeldOut:
    """The recorded held-out files, labelled by the model's class names (by their recorded
    indices only for a model without class names). Files recorded relative to a data folder
    must lie in it; a CSV list's may lie anywhere (its rows may name ``../other/x.png``)."""
    root = _existing(Path(heldout["root"]), "data folder")
    model = [nfc(c) for c in lens.classes or []]
    entries = heldout["files"]
    if not csv_list:
        out = next((rel for rel, _, _ in entries if not _inside(root, rel)), None)
        if out is not None:
            raise _damaged(f"file '{out}' lies outside its data folder {display_path(root)}")
    index_of: dict[str, int] = {}
    if model:
        unknown = []
        for _, _, name in entries:
            if name not in index_of:
                k = find_name(nfc(name), model)
                index_of[name] = -1 if k is None else k
                if k is None:
                    unknown.append(name)
        if unknown:
            listing = ", ".join(model[:8]) + (", ..." if len(model) > 8 else "")
            shown = "; ".join(f"'{n}'{_closest(n, model)}" for n in unknown[:5])
            raise DataError(
                f"the model card's held-out images are recorded with class names the model "
                f"does not have: {shown} (model classes: {listing}); the card was edited or "
                "belongs to another model: give the data to use (--data FOLDER or a .csv list)"
            )
    files, labels, gone = [], [], []
    for rel, index, name in entries:
        path = root / rel
        if not path.exists():
            gone.append(rel)
            continue
        files.append(path)
        labels.append(index_of[name] if model else index)
    if not files:
        raise DataError(
            f"none of the {len(gone)} held-out images recorded on the model's card is in "
            f"{display_path(root)} any more (first: {gone[0]}); give the data to use (--data)"
        )
    if gone:
        warnings.warn(
            f"{len(gone)} of the {len(gone) + len(files)} held-out images recorded on the "
            f"model's card are gone from {display_path(root)} (first: {gone[0]}); using the "
            f"{len(files)} left",
            NetlensWarning,
            stacklevel=3,
        )
    classes = list(lens.classes or [])
    if not classes:
        top = max(labels) + 1
        classes = [str(k) for k in range(top)]
        for _, index, name in entries:
            if 0 <= index < top:
                classes[index] = name
    split = heldout.get("split") or "validation"
    what = f"{display_path(root)}: the {len(files)} held-out {split} images"
    return HeldOut(files, labels, classes, lens.transform, what, None if csv_list else root)


def _warn_trained_on(lens: Lens, path: Path) -> None:
    """Warn once per model that its card's data are the images it was trained on."""
    if lens.__dict__.get("_warned_trained_on"):
        return
    lens.__dict__["_warned_trained_on"] = True
    warnings.warn(
        f"no data given: using {display_path(path)} from the model's card, the images it was "
        "trained on (its card records no held-out images), so scores are optimistic; give "
        "held-out data with --data",
        NetlensWarning,
        stacklevel=3,
    )

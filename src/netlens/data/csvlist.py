"""CSV image lists: ``path,label`` rows (a header row is optional), paths relative to the file;
or a one-hot table (``image,MEL,NV,BCC``: a 0/1 column per class, headed by its name).

Integer labels are class indices (range-checked against the model's class count), unless the
model has class names and every label is one of them (a model trained on folders ``0`` … ``11``
numbered them in text order): then they are matched by name, as folders are, with a warning
where a name's class is not the index it spells. Name labels are matched to the model's class
names (see :mod:`netlens.data.labels`); with no model classes they are numbered in sorted order.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError, NetlensWarning
from ..images import IMAGE_SUFFIXES, first_readable, read_image
from ..naming import display_path
from ..preprocess import Preprocess
from .labels import UNSET, LabelMatch, index_labels, match_names
from .resolve import DATASET_DEFAULT, sized

__all__ = ["CsvListDataset", "read_csv_list"]


_PATH_HEADERS = frozenset(
    "path file filename file_name filepath file_path fname image image_path image_name "
    "image_id img img_path images".split()
)
_LABEL_HEADERS = frozenset("label labels class class_name target category y".split())


def read_csv_list(path: str | Path) -> tuple[list[Path], list[str]]:
    """The (image path, label) rows of a CSV list, as spreadsheets and other systems write them
    (see :func:`_read_csv`)."""
    files, labels, _ = _read_csv(path)
    return files, labels


def _read_csv(path: str | Path) -> tuple[list[Path], list[str], list[str] | None]:
    """The image paths and labels a CSV lists, and the class columns of a one-hot table in
    their order (None for ``path,label`` rows).

    A first row naming its columns (``path,label``, ``filename,class``, ...) is a header. A
    byte-order mark (Excel's "CSV UTF-8") is dropped; rows may be separated by ``;`` (Excel
    where the decimal mark is a comma) or tabs when the first row has no comma; Windows paths
    (``cat\\001.jpg``) are read with ``/`` when no file has the name as written.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV list not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
        first = next((line for line in text.splitlines() if line.strip()), "")
        sep = next((d for d in ",;\t" if d in first), ",")
        rows, lines = _rows(csv.reader(io.StringIO(text, newline=""), delimiter=sep))
    except (UnicodeDecodeError, csv.Error) as exc:
        why = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)
        raise DataError(f"{path} is not a CSV list of 'path,label' rows ({why})") from None
    columns = (0, 1)
    if rows and _is_header(rows[0]):
        header, rows, lines = rows[0], rows[1:], lines[1:]
        columns = _named_columns(header)
        onehot = _one_hot_columns(header, rows, columns)
        if onehot:
            files = _where_listed(path, [r[columns[0]].strip() for r in rows])
            order = [header[i].strip() for i in onehot]
            return files, _one_hot_labels(path, header, rows, lines, onehot), order
    bad = [n for n, r in zip(lines, rows, strict=True) if len(r) <= max(columns)]
    if bad:
        raise DataError(f"{path}: line {bad[0]} is not 'path,label' (CSV lists need two columns)")
    if not rows:
        raise DataError(f"{path} lists no images (expected 'path,label' rows)")
    names = [r[columns[0]].strip() for r in rows]
    labels = [_integral(r[columns[1]].strip()) for r in rows]
    return _where_listed(path, names), labels, None


def _rows(reader: Any) -> tuple[list[list[str]], list[int]]:
    """The rows that are not blank, and the file line each starts on (for messages)."""
    rows, lines, start = [], [], 1
    for row in reader:
        if any(c.strip() for c in row):
            rows.append(row)
            lines.append(start)
        start = reader.line_num + 1  # a quoted cell may hold line breaks
    return rows, lines


def _named_columns(header: list[str]) -> tuple[int, int]:
    """The path and label columns a header names (``lesion_id,image_id,label``: 1 and 2);
    the first two columns where it names neither."""
    cells = [c.strip().lower().replace(" ", "_") for c in header]
    path = next((i for i, c in enumerate(cells) if c in _PATH_HEADERS), 0)
    label = next((i for i, c in enumerate(cells) if c in _LABEL_HEADERS and i != path), None)
    if label is None:
        label = 1 if path == 0 else 0
    return path, label


def _one_hot_columns(
    header: list[str], rows: list[list[str]], columns: tuple[int, int]
) -> list[int]:
    """The columns of a one-hot label table (ISIC's ``image,MEL,NV,BCC,...``, Kaggle's
    ``image_id,healthy,rust,scab``: one 0/1 column per class, headed by its name); empty
    unless the header names no label column and two or more columns hold only 0 and 1."""
    cells = [c.strip().lower().replace(" ", "_") for c in header]
    if any(c in _LABEL_HEADERS for c in cells) or not rows:
        return []
    found = [
        i
        for i in range(len(header))
        if i != columns[0]
        and header[i].strip()
        and all(len(r) > i and _integral(r[i].strip()) in ("0", "1") for r in rows)
    ]
    return found if len(found) >= 2 else []


def _one_hot_labels(
    path: Path, header: list[str], rows: list[list[str]], lines: list[int], onehot: list[int]
) -> list[str]:
    """Each row's class: the name heading its one column marked 1; one line for a row with
    none or several (a multi-label list, which netlens reads one class per image)."""
    labels = []
    for n, row in zip(lines, rows, strict=True):
        marked = [header[i].strip() for i in onehot if _integral(row[i].strip()) == "1"]
        if len(marked) != 1:
            names = ", ".join(header[i].strip() for i in onehot)
            raise DataError(
                f"{path.name} marks {len(marked)} of its class columns ({names}) in row {n}: "
                "netlens reads one class per image; list each image with its one class "
                "(a 'path,label' CSV)"
            )
        labels.append(marked[0])
    return labels


def _integral(label: str) -> str:
    """``3.0`` as ``3``: pandas writes an integer column as floats once it holds a gap."""
    head, dot, tail = label.partition(".")
    if dot and head.lstrip("+-").isdigit() and tail and set(tail) == {"0"}:
        return head
    return label


def _where_listed(csv_path: Path, names: list[str]) -> list[Path]:
    """The listed files, relative to the CSV's folder; when none is there, as Kaggle-style
    lists name them: an id without its extension (``a1`` for ``a1.png``) and/or in a folder
    named as the CSV (``train.csv`` beside ``train/``), the layout under which the first row's
    file exists. Some there, some not: the missing ones are skipped and reported later, as
    unreadable images are. None there in any layout: one line saying where they were sought."""
    folder = csv_path.parent
    files = [_listed_file(folder, n) for n in names]
    if any(f.exists() for f in files):
        return files
    suffixes = ("", *IMAGE_SUFFIXES, *(s.upper() for s in IMAGE_SUFFIXES))
    for base in (b for b in (folder, folder / csv_path.stem) if b.is_dir()):
        ext = next((e for e in suffixes if (base / (names[0] + e)).is_file()), None)
        if ext is not None:
            return [_listed_file(base, n + ext) for n in names]
    raise DataError(
        f"{csv_path.name} lists {len(names)} image(s), none of them there (first: "
        f"{display_path(files[0])}); paths are read relative to the CSV's folder (also as "
        f"ids without their extension, or inside {display_path(folder / csv_path.stem)}/)"
    )


def _is_header(row: list[str]) -> bool:
    cells = [c.strip().lower().replace(" ", "_") for c in row]
    if cells[0] in _PATH_HEADERS or (len(cells) > 1 and cells[1] in _LABEL_HEADERS):
        return True
    return bool(set(cells) & _PATH_HEADERS) and bool(set(cells) & _LABEL_HEADERS)


def _listed_file(folder: Path, name: str) -> Path:
    """A listed path, relative to the CSV's folder; a Windows path read with ``/`` unless a
    file has the name as written (a backslash is a legal character in a Linux file name)."""
    given = folder / name
    if "\\" in name and not given.exists():
        return folder / name.replace("\\", "/")
    return given


def _names_not_indices(raw: list[str], classes: Any) -> bool:
    """Whether number labels are the model's class names at other positions (a model trained
    on folders ``0`` … ``11`` has them in text order): then they are read by name."""
    if not isinstance(classes, (list, tuple)) or not set(raw) <= set(classes):
        return False
    return any(list(classes).index(v) != int(v) for v in set(raw))


def _numbers_as_names(
    path: str | Path, raw: list[str], match: LabelMatch, label_map: Any
) -> LabelMatch:
    """``match`` for labels that are all numbers and all model class names (read by name):
    where some name's class is not the index it spells, a warning and a label source saying
    names were used, not indices."""
    if label_map is not None or not raw or not all(v.lstrip("+-").isdigit() for v in raw):
        return match
    moved = sorted((v for v in set(raw) if match.index[v] != int(v)), key=int)
    if not moved:
        return match
    first = moved[0]
    warnings.warn(
        f"{display_path(Path(path))}: its labels are numbers that are all the model's class "
        f"names: matched by name, not read as class indices ('{first}' is class "
        f"{match.index[first]}, not {first}); a label map (--label-map) reads them otherwise",
        NetlensWarning,
        stacklevel=3,
    )
    return LabelMatch(match.index, match.classes, f"{match.source} (numbers read as names)")


class ListedImages(Dataset):
    """Image files with their labels (``files``, ``labels``), read through ``preprocess``."""

    files: list[Path]
    labels: np.ndarray
    preprocess: Any

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.preprocess(read_image(self.files[i])), int(self.labels[i])

    def image(self, i: int) -> np.ndarray:
        return read_image(self.files[i])


class CsvListDataset(ListedImages):
    """Images listed in a CSV file with their labels.

    Args:
        path: the CSV file (``path,label`` rows; paths relative to it).
        preprocess: the model's preprocessing.
        classes: the model's class names, as for :class:`~netlens.data.ImageFolderDataset`.
        label_map: CSV label → model class name or index.
        num_classes: the model's class count, to range-check integer labels without names.

    Attributes:
        classes: the names the labels index; ``label_source``: how labels were assigned.
    """

    def __init__(
        self,
        path: str | Path,
        preprocess: Preprocess | None = None,
        classes: Sequence[str] | None = UNSET,
        label_map: Mapping[str, Any] | str | Path | None = None,
        num_classes: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.files, raw, columns = _read_csv(path)
        named = isinstance(classes, (list, tuple))
        if columns and label_map is None and not named:  # trained on the one-hot vectors
            if num_classes is not None and len(columns) != num_classes:
                raise DataError(
                    f"{display_path(Path(path))} has {len(columns)} class columns "
                    f"({', '.join(columns[:5])}{', ...' if len(columns) > 5 else ''}), the model "
                    f"{num_classes} outputs; give the model its class names (--classes FILE)"
                )
            match = LabelMatch(
                {n: i for i, n in enumerate(columns)},
                columns,
                "CSV one-hot columns, in their order (the model has no class names)",
            )
            self.labels = np.asarray([match.index[v] for v in raw], np.int64)
        elif (
            label_map is None
            and all(v.lstrip("+-").isdigit() for v in raw)
            and not _names_not_indices(raw, classes)
        ):
            match = index_labels(raw, classes, num_classes=num_classes)
            self.labels = np.asarray([int(v) for v in raw], np.int64)
        else:
            what = "CSV one-hot columns" if columns else "CSV labels"
            match = match_names(raw, classes, label_map=label_map, what=what)
            match = _numbers_as_names(path, raw, match, label_map)
            self.labels = np.asarray([match.index[v] for v in raw], np.int64)
        self.classes, self.label_source = match.classes, match.source
        pre = preprocess or Preprocess(source=DATASET_DEFAULT)  # a model's replaces it
        self.preprocess = sized(pre, lambda: first_readable(self.files))

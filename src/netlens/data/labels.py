"""Labels by name: match the class names found in data to the model's class names.

Folder names and CSV labels are names; they are matched to the model's classes exactly (in any
Unicode normal form: ``été`` as macOS writes it, NFD, is ``été``), then ignoring case and
separators (``T_Shirt`` is ``t-shirt``), so a label is the index of the model class it names.
Integers in a CSV are class indices and stay so, unless every one is a model class name.
Names the model does not have are an error naming the closest model classes, unless a label map
(data name → model class name or index) says where they go. A model without class names keeps
the sorted order of the names and says so once. Every match records its *label source*, so
tables can name it.
"""

from __future__ import annotations

import json
import operator
import re
import unicodedata
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, NetlensWarning, close_names

__all__ = [
    "UNSET",
    "LabelMatch",
    "find_name",
    "index_labels",
    "index_per_row",
    "match_names",
    "names_by_index",
    "nfc",
    "normalize_name",
    "read_class_names",
    "read_label_map",
]


class _Unset:
    """Marks "no model classes given" (None means "the model has no class names")."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@dataclass(frozen=True)
class LabelMatch:
    """Where each data label goes: ``index[name]`` is a class index into ``classes``."""

    index: dict[str, int]
    classes: list[str]
    source: str


def normalize_name(name: str) -> str:
    """Case- and separator-insensitive form: ``"T_Shirt"``, ``"t-shirt"`` → ``"tshirt"``; in
    Unicode's composed form (NFC), so ``été`` as macOS writes file names (NFD: ``e`` + accent)
    is ``été``."""
    text = unicodedata.normalize("NFC", str(name))
    return unicodedata.normalize("NFC", re.sub(r"[\s_\-./]+", "", text).casefold())


def nfc(name: str) -> str:
    """``name`` in Unicode's composed form (NFC): the same text, however a file system wrote
    it (macOS writes ``été`` as ``e`` + combining accent, NFD)."""
    return unicodedata.normalize("NFC", str(name))


def _is_int(text: str) -> bool:
    return bool(re.fullmatch(r"[+-]?\d+", str(text).strip()))


def match_names(
    names: Iterable[str],
    classes: Sequence[str] | None | _Unset = UNSET,
    *,
    label_map: Mapping[str, Any] | str | Path | None = None,
    what: str = "folder names",
    num_classes: int | None = None,
) -> LabelMatch:
    """Map the distinct label ``names`` found in data to class indices.

    Args:
        names: the data's label names (folder names, CSV labels, a dataset's classes).
        classes: the model's class names; None: the model has none (sorted order, with a
            warning; names that are numbers are class indices); UNSET: no model involved
            (sorted order, silently).
        label_map: data name → model class name or index, applied first (a dict or a file).
        what: how the names are called in messages and the label source.
        num_classes: the model's number of outputs, when known: numbers at or past it cannot
            be its class indices (they are ImageFolder's positions then).
    """
    distinct = sorted(set(names))
    if classes is None and num_classes == 0 and distinct and label_map is None:
        raise DataError(no_head_message(f"{what} ({', '.join(distinct[:3])}, ...)"))
    mapping = read_label_map(label_map) if label_map is not None else {}
    numbers = sorted(distinct, key=lambda n: int(n)) if all(_is_int(n) for n in distinct) else []
    past = bool(numbers) and num_classes is not None and int(numbers[-1]) >= num_classes
    if classes is None and not mapping and numbers and past and len(distinct) <= num_classes:
        warnings.warn(
            f"{what} that are numbers go up to {numbers[-1]}, past the model's {num_classes} "
            f"outputs: they are numbered in text order ({', '.join(distinct[:4])}, ...), as "
            "torchvision's ImageFolder numbers them; if the model numbers them otherwise, give "
            "it its classes (--classes FILE)",
            NetlensWarning,
            stacklevel=3,
        )
        return LabelMatch(
            {n: i for i, n in enumerate(distinct)}, distinct, f"sorted {what} (ImageFolder order)"
        )
    contiguous = [int(n) for n in numbers] == list(range(len(numbers)))
    if classes is None and not mapping and numbers and not contiguous and numbers == distinct:
        return index_labels(distinct, None, what=what, num_classes=num_classes)  # 0, 2, 4
    if classes is None and not mapping and numbers and numbers != distinct:
        warnings.warn(
            f"{what} that are numbers are read as class indices ('{numbers[-1]}' is class "
            f"{int(numbers[-1])}, as numbers in a CSV are); a model trained with torchvision's "
            f"ImageFolder on them numbered them in text order ({', '.join(distinct[:4])}, ...): "
            f"if so, give it that order as its classes (--classes {','.join(distinct[:4])},...)",
            NetlensWarning,
            stacklevel=3,
        )
        return index_labels(distinct, None, what=what)
    if isinstance(classes, _Unset) or (classes is None and not mapping):
        if classes is None:
            warnings.warn(
                f"the model has no class names: labels are the sorted {what} "
                f"({', '.join(distinct[:6])}{', ...' if len(distinct) > 6 else ''}) numbered 0.."
                f"{len(distinct) - 1}; give the model its classes (--classes FILE) to match "
                "by name",
                NetlensWarning,
                stacklevel=3,
            )
        note = " (model has no class names)" if classes is None else ""
        return LabelMatch({n: i for i, n in enumerate(distinct)}, distinct, f"sorted {what}{note}")
    model = list(classes or [])
    aliases = getattr(classes, "aliases", {})
    index, unknown = {}, []
    for name in distinct:
        k = (
            _lookup(mapping[name], model, name, aliases)
            if name in mapping
            else find_name(name, model, aliases)
        )
        if k is None:
            unknown.append(name)
        else:
            index[name] = k
    if unknown and all(_is_int(n) for n in distinct) and not mapping:
        return index_labels(distinct, model, what=what)
    by_part = _match_by_part(unknown, model, aliases, taken=set(index.values()))
    index.update(by_part)
    unknown = [n for n in unknown if n not in by_part]
    if unknown:
        raise DataError(_unknown_message(unknown, model, what))
    via = " via the label map" if mapping else ""
    if by_part:
        via += f" ('{next(iter(by_part))}' by a part of its name)"
    return LabelMatch(index, model, f"{what} matched to model classes{via}")


def index_labels(
    values: Iterable[str | int],
    classes: Sequence[str] | None | _Unset = UNSET,
    *,
    what: str = "CSV",
    num_classes: int | None = None,
) -> LabelMatch:
    """Integer labels are class indices: checked against the model's class count when known.

    ``index`` is keyed by each value as given, so zero-padded names (GTSRB's folders ``00000``,
    ``00002``) find their number as ``0`` and ``2`` do."""
    values = list(values)
    distinct = sorted({int(v) for v in values})
    known = list(classes) if isinstance(classes, (list, tuple)) else None
    count = len(known) if known else num_classes
    noun = f"{what} labels" if what == "CSV" else what  # "CSV labels", "folder names"
    if distinct and distinct[0] < 0:
        raise DataError(f"{noun} must be class indices >= 0; found {distinct[0]}")
    if count == 0 and distinct:
        raise DataError(no_head_message(noun))
    if count is not None and distinct and distinct[-1] >= count:
        bad = [v for v in distinct if v >= count]
        raise DataError(
            f"{noun} are class indices, but {', '.join(map(str, bad[:5]))} "
            f"{'is' if len(bad) == 1 else 'are'} out of range for a model with {count} classes "
            f"(0..{count - 1}); use the model's own class indices or names"
        )
    names = known or [str(i) for i in range(max(distinct, default=-1) + 1)]
    src = f"{what} integer indices" if what == "CSV" else f"{what} as class indices"
    return LabelMatch({str(v): int(v) for v in values}, names, src)


def no_head_message(labels: str) -> str:
    """Labels given to a model with no classification head (0 class outputs: a timm model
    built with ``num_classes=0``), as ``lens.cam`` advises on its outputs."""
    return (
        f"{labels} are classes, but the model has no classification head: its outputs look "
        "like features, not class scores (a timm model built with num_classes=0); load the "
        "model with its classification head"
    )


def index_per_row(labels: Any, what: str = "given labels") -> np.ndarray:
    """One label per image from a label array as training code keeps it: an N×1 column is its
    N labels (as a Dataset's ``tensor([k])`` items are), a one-hot N×K row is the class it
    marks (as a one-hot CSV table's row is). Rows marking none or several classes, soft
    labels and other shapes are one line: netlens reads one class per image."""
    arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] == 1:
        return arr[:, 0]
    if arr.ndim == 2 and arr.shape[1] > 1 and np.isin(arr, (0, 1)).all():
        marked = arr.sum(axis=1)
        bad = np.flatnonzero(marked != 1)
        if len(bad) == 0:
            return arr.argmax(axis=1)
        raise DataError(
            f"{what} are one-hot rows, but row {bad[0]} marks {int(marked[bad[0]])} classes: "
            "netlens reads one class per image; give each image its class index"
        )
    if arr.ndim != 1:
        shape = f"shaped {'×'.join(map(str, arr.shape))}" if arr.ndim else "a single value"
        soft = " and not one-hot (0/1)" if arr.ndim == 2 else ""
        raise DataError(
            f"{what} are {shape}{soft}: give each image its class index (N labels; an N×1 "
            "column and one-hot N×K rows are read too)"
        )
    return arr


def find_name(name: str, model: list[str], aliases: Mapping[str, int] | None = None) -> int | None:
    """Exact match first, then the case/separator-insensitive one (when it is unambiguous),
    then the classes' other names (``aliases``, normalised: ImageNet's WordNet IDs)."""
    if name in model:
        return model.index(name)
    same = [i for i, c in enumerate(model) if nfc(c) == nfc(name)]
    if len(same) == 1:  # the same text in another Unicode form (NFD, as macOS writes it)
        return same[0]
    key = normalize_name(name)
    hits = [i for i, c in enumerate(model) if normalize_name(c) == key]
    if len(hits) == 1:
        return hits[0]
    return (aliases or {}).get(key) if not hits else None


def _match_by_part(
    names: list[str], model: list[str], aliases: Mapping[str, int], taken: set[int]
) -> dict[str, int]:
    """Names such as torchvision's MNIST classes (``0 - zero``) and Fashion-MNIST's
    (``T-shirt/top``; the Hugging Face Hub's ``T - shirt / top``), matched by the one part (split
    at `` - ``, or at ``/``) that names a model class; only when every such match is a class of
    its own, not matched otherwise."""
    found: dict[str, int] = {}
    for name in names:
        text = name.strip()
        parts = [p for p in re.split(r"\s+-\s+", text) + re.split(r"\s*/\s*", text) if p]
        parts = [p for p in parts if p != text]
        hits = {k for p in parts if (k := find_name(p, model, aliases)) is not None}
        if parts and len(hits) == 1:
            found[name] = hits.pop()
    values = list(found.values())
    if len(set(values)) != len(values) or taken & set(values):
        return {}
    return found


def _lookup(target: Any, model: list[str], name: str, aliases: Mapping[str, int]) -> int:
    if isinstance(target, int) or _is_int(str(target)):
        k = int(target)
        if 0 <= k < len(model) or not model:
            return k
        raise DataError(
            f"the label map sends '{name}' to class {k}, but the model has {len(model)} classes"
        )
    k = find_name(str(target), model, aliases)
    if k is None:
        raise DataError(
            f"the label map sends '{name}' to '{target}', which is not a model class"
            f"{_closest(str(target), model)}"
        )
    return k


def _closest(name: str, model: list[str]) -> str:
    by_norm = {normalize_name(c): c for c in model}
    hits = [by_norm[h] for h in close_names(normalize_name(name), list(by_norm), n=3)]
    return f" (closest: {', '.join(repr(h) for h in hits)})" if hits else ""


def _unknown_message(unknown: list[str], model: list[str], what: str) -> str:
    shown = "; ".join(f"'{n}'{_closest(n, model)}" for n in unknown[:5])
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    listing = ", ".join(model[:8]) + (", ..." if len(model) > 8 else "")
    return (
        f"{what} the model does not have: {shown}{more} (model classes: {listing}); rename them, "
        "map them with --label-map FILE (label_map= in Python), or pass classes= for an "
        "intended mismatch"
    )


# -- files -----------------------------------------------------------------------------------
def read_label_map(source: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """A label map from a dict, a JSON object file, or a CSV/text file of ``data,model`` rows."""
    if isinstance(source, Mapping):
        return {str(k): v for k, v in source.items()}
    path = Path(source)
    if not _is_file(path):
        _refuse_special(path, "label map")
        raise DataError(f"label map not found: {path} (a JSON object or 'data,model' lines)")
    text = _read_text(path, "label map")
    if text.lstrip().startswith("{"):
        try:
            return {str(k): v for k, v in json.loads(text).items()}
        except (json.JSONDecodeError, AttributeError) as exc:
            raise DataError(f"label map {path} is not valid JSON ({exc})") from None
    out: dict[str, Any] = {}
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [p.strip() for p in re.split(r"[,\t]", line, maxsplit=1)]
        if len(parts) != 2 or not all(parts):
            raise DataError(f"{path}: line {i} is not 'data name,model class'")
        out[parts[0]] = parts[1]
    return out


def read_class_names(source: Sequence[str] | str | Path) -> list[str]:
    """Class names from a list, a file (one name per line, a JSON list, ``{index: name}`` or
    ``{name: index}``), or a comma-separated string (``"cat,dog"``).

    Example:
        >>> read_class_names("cat,dog")
        ['cat', 'dog']
    """
    if not isinstance(source, (str, Path)):
        names = [str(n) for n in source]
    elif _is_file(Path(source)):
        names = _parse_class_file(Path(source))
    elif isinstance(source, str) and "," in source:
        names = [n.strip() for n in source.split(",")]
    else:
        _refuse_special(Path(source), "class names")
        raise DataError(
            f"class names file not found: {source} (a file with one name per line or JSON, "
            "or names separated by commas)"
        )
    if not names or not all(names):
        raise DataError("class names must be non-empty (an empty list, file or name given)")
    return names


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a file; False for text no file can be named (too long, NUL)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _refuse_special(path: Path, what: str) -> None:
    """One line for a path that exists but is no regular file (a pipe, a device, a folder)."""
    try:
        special = path.exists()
    except (OSError, ValueError):
        return
    if special:
        raise DataError(
            f"{what}: {path} is a folder, pipe or device, not a file; pass a regular file"
        )


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # Notepad's and Excel's BOM dropped
    except UnicodeDecodeError:
        raise DataError(f"{what} file {path} is not UTF-8 text") from None


def _parse_class_file(path: Path) -> list[str]:
    text = _read_text(path, "class names")
    if text.lstrip()[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"class names file {path} is not valid JSON ({exc})") from None
        if isinstance(data, dict):
            return _from_index_dict(data, path)
        return [str(n) for n in data]
    return [line.strip() for line in text.splitlines() if line.strip()]


def _from_index_dict(data: dict[str, Any], path: Path) -> list[str]:
    try:
        return names_by_index(data)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None


def _index(v: Any) -> int | None:
    """An index value: an int, a numpy integer or a 0-d integer tensor (``LabelEncoder``-style
    records); None for anything else (a bool, a float, a name)."""
    if isinstance(v, (bool, float, str)):
        return None
    try:
        return operator.index(v)
    except TypeError:
        return None


def _name_of(v: Any) -> str:
    """A class name: Keras' ``imagenet_class_index.json`` gives ``["n02123045", "tabby"]``."""
    if isinstance(v, (list, tuple)) and len(v) == 2 and re.fullmatch(r"n\d{8}", str(v[0])):
        return str(v[1])
    if not isinstance(v, str):
        raise DataError(f"a class name must be text, not {v!r}"[:200])
    return v


def names_by_index(data: Mapping[Any, Any]) -> list[str]:
    """Class names in index order from ``{index: name}`` or ``{name: index}`` (ImageFolder's
    ``class_to_idx``; its values are numbers, which tells it apart even when the names are
    numbers: ``{"1": 0, "10": 1, "2": 2}``); :class:`DataError` saying why not otherwise."""
    if data and all(_index(v) is not None for v in data.values()):
        by_index = {_index(v): str(k) for k, v in data.items()}
    elif all(_is_int(k) and not isinstance(k, bool) for k in data):
        by_index = {int(k): _name_of(v) for k, v in data.items()}
    else:
        raise DataError(
            'a JSON object of class names maps indices to names ({"0": "cat"}) or names to '
            'indices ({"cat": 0})'
        )
    if len(by_index) != len(data):
        raise DataError("two classes have the same index")
    missing = sorted(set(range(len(by_index))) - set(by_index))
    if missing:
        raise DataError(f"class indices must run 0..{len(by_index) - 1}; {missing[0]} is missing")
    return [by_index[i] for i in range(len(by_index))]

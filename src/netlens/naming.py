"""Printable, filesystem-safe names for everything netlens derives from user paths and labels.

File names on Linux are bytes: a name that is not UTF-8 reaches Python as a str with lone
surrogates (``b"\\xff.png"`` → ``"\\udcff.png"``), which fonts, JSON consumers and other file
systems cannot take. Output names go through :func:`safe_stem` / :func:`safe_component`, and
messages show paths through :func:`display_path`.

Example:
    >>> safe_stem("photos/cat.jpg")
    'cat'
    >>> safe_stem(os.fsdecode(b"\\xff\\xfe.png"))[:3]  # then a hash of the original bytes
    '___'
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

__all__ = ["MAX_NAME_BYTES", "display_path", "is_special_file", "safe_component", "safe_stem"]

MAX_NAME_BYTES = 96  # leaves room for "_<method>_<target>_<layer>_figure.png" within 255 bytes
_HASH_CHARS = 8
_UNSAFE = re.compile(r'[<>:"/\\|?*]')  # also invalid on Windows and in URLs
_WINDOWS_RESERVED = {
    "con",
    "prn",
    "aux",
    "nul",
    *(f"com{i}" for i in range(1, 10)),
    *(f"lpt{i}" for i in range(1, 10)),
}


def display_path(path: str | os.PathLike[str] | bytes) -> str:
    """``path`` as one printable line: undecodable bytes as ``\\xNN``, control characters escaped.

    Example:
        >>> display_path("a\\nb.png")
        'a\\\\nb.png'
    """
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def safe_component(text: str, *, max_bytes: int = MAX_NAME_BYTES) -> str:
    """``text`` as one printable, filesystem-safe file-name component.

    A name that is already safe comes back unchanged. Otherwise unprintable characters
    (control characters, undecodable bytes) and ``<>:"/\\|?*`` become ``_``, leading ``-``/``.``
    and trailing dots/spaces are replaced, names longer than ``max_bytes`` (UTF-8) are cut, and
    a short hash of the original is appended so that two different names never meet.

    Example:
        >>> safe_component("tabby cat")
        'tabby cat'
        >>> safe_component("n01440764/tench").startswith("n01440764_tench_")
        True
    """
    clean = "".join("_" if _UNSAFE.match(c) or not c.isprintable() else c for c in text)
    clean = re.sub(r"^[-.]", "_", clean)
    clean = re.sub(r"[ .]+$", lambda m: "_" * len(m.group()), clean)
    if clean.split(".")[0].lower() in _WINDOWS_RESERVED:
        clean = "_" + clean
    if clean == text and text and len(text.encode("utf-8")) <= max_bytes:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    head = _cut_utf8(clean, max(1, max_bytes - _HASH_CHARS - 1))
    return f"{head or '_'}_{digest}"


def safe_stem(path: str | os.PathLike[str]) -> str:
    """The file name of ``path`` without its suffix, made safe with :func:`safe_component`.

    Different stems always give different names; equal stems in different folders (or with
    different suffixes) give equal names, so a batch still de-duplicates its names: ignoring
    case (``IMG_1`` and ``img_1`` are one file on macOS and Windows) and never with a suffix
    that is another input's stem (:func:`netlens.images.load_batch`).
    """
    return safe_component(Path(path).stem)


def _cut_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` that fits in ``max_bytes`` bytes of UTF-8."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", "ignore")


def is_special_file(path: Path) -> bool:
    """``path`` exists and is neither a regular file nor a folder (a FIFO, socket or device):
    opening a pipe waits for a writer and a device may never end, so callers refuse it."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False  # opening it says why, in its own words
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))

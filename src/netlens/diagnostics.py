"""Keep dependencies' warnings and native libraries' chatter from breaking the one-line promise.

Two tools:

- :func:`captured_warnings` records Python warnings and library log records while a block
  runs (torch's pickle/``weights_only`` notices, timm deprecations, matplotlib's "Glyph ...
  missing from font") and turns the ones that matter into short notes of our own
  (:attr:`Diagnostics.notes`, netlens' own :class:`~netlens.errors.NetlensWarning` lines
  first); nothing reaches stderr by itself.
- :func:`native_stderr_silenced` points file descriptor 2 at ``/dev/null`` while C/C++ code
  runs (libpng/libtiff/OpenCV print straight to it, bypassing Python).

``NETLENS_DEBUG=1`` turns both off, so everything shows again.

Example (the CLI's error boundary):
    >>> with captured_warnings() as diag:
    ...     run_command()
    >>> for note in diag.notes:
    ...     print(f"warning: {note}", file=sys.stderr)
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = [
    "Diagnostics",
    "captured_warnings",
    "debug_mode",
    "native_stderr_silenced",
    "torch_load_quietly",
]

_GLYPH = re.compile(r"Glyph (\d+) \(.*?\) missing from (?:current )?font")
_TIMM_RENAMED = re.compile(r"Mapping deprecated model name (\S+) to current (\S+?)\.?$")
_MAX_RAW = 200
# torch.load's notices about pickles: netlens decides weights_only/trust itself
_TORCH_LOAD_NOISE = r".*(pickle protocol|weights_only|sparse tensor invariants|TypedStorage)"


def debug_mode() -> bool:
    """True when ``NETLENS_DEBUG=1``: show raw warnings, native output and tracebacks."""
    return os.environ.get("NETLENS_DEBUG") == "1"


@dataclass
class Diagnostics:
    """What a block emitted: raw warning and log lines, and the notes we make of them."""

    raw: list[str] = field(default_factory=list)
    own: list[str] = field(default_factory=list)
    missing_glyphs: set[str] = field(default_factory=set)
    other_notes: list[str] = field(default_factory=list)

    @property
    def notes(self) -> list[str]:
        """One line each, deduplicated, for the user: netlens' own warnings
        (:class:`~netlens.errors.NetlensWarning`) first, then what we make of libraries'."""
        out = list(dict.fromkeys(self.own + self.other_notes))
        if self.missing_glyphs:
            chars = "".join(sorted(self.missing_glyphs))[:20]
            out.append(
                f"figures show empty boxes for characters the installed fonts lack ({chars}); "
                "install a font that has them (e.g. Noto Sans CJK) for readable labels"
            )
        return out

    def add(self, message: str, category: str, own: bool = False) -> None:
        """Record one warning (or log record) and make a note of it when it matters."""
        text = " ".join(message.split())
        if own:
            self.own.append(text)
            return
        line = f"{category}: {text}"
        if line not in self.raw and len(self.raw) < _MAX_RAW:
            self.raw.append(line)
        if glyph := _GLYPH.search(text):
            self.missing_glyphs.add(chr(int(glyph.group(1))))
        elif renamed := _TIMM_RENAMED.search(text):
            self.other_notes.append(
                f"timm renamed {renamed.group(1)} to {renamed.group(2)}; use the new name"
            )
        # torch's pickle/weights_only notices say nothing netlens does not decide itself
        # (it never unpickles code without trust); other warnings stay in ``raw`` only.


class _Collector(logging.Handler):
    """A logging handler that feeds WARNING+ records of libraries into a Diagnostics."""

    def __init__(self, diag: Diagnostics) -> None:
        super().__init__(logging.WARNING)
        self.diag = diag

    def emit(self, record: logging.LogRecord) -> None:
        self.diag.add(record.getMessage(), f"log {record.name}")


@contextmanager
def captured_warnings() -> Iterator[Diagnostics]:
    """Record Python warnings and library log warnings inside the block (none are printed).

    With ``NETLENS_DEBUG=1`` nothing is captured. Not thread-safe (Python's warning filters
    are process-wide): use it at the outer edge of a command, not inside worker threads.
    """
    diag = Diagnostics()
    if debug_mode():
        yield diag
        return
    root = logging.getLogger()
    handler = _Collector(diag)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        root.addHandler(handler)
        try:
            yield diag
        finally:
            root.removeHandler(handler)
            from .errors import NetlensWarning

            for w in caught:
                own = issubclass(w.category, NetlensWarning)
                diag.add(str(w.message), w.category.__name__, own=own)


@contextmanager
def torch_load_quietly() -> Iterator[None]:
    """Hide torch.load's pickle/``weights_only`` notices (in Python too, not only the CLI).

    Example:
        >>> with torch_load_quietly():
        ...     state = torch.load(path, weights_only=True)  # doctest: +SKIP
    """
    with warnings.catch_warnings():
        if not debug_mode():
            warnings.filterwarnings("ignore", message=_TORCH_LOAD_NOISE)
        yield


class _NativeStderr:
    """Reference-counted redirection of fd 2 (one process-wide resource, hence one object)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: int | None = None

    def enter(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._saved = _redirect_fd2()
            self._depth += 1

    def exit(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._saved is not None:
                os.dup2(self._saved, 2)
                os.close(self._saved)
                self._saved = None


def _redirect_fd2() -> int | None:
    """Point fd 2 at /dev/null; the saved original fd (None when fd 2 cannot be redirected)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        return None
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
    finally:
        os.close(devnull)
    return saved


_NATIVE = _NativeStderr()


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Silence what C/C++ libraries print to fd 2 inside the block (nesting and threads safe)."""
    if debug_mode():
        yield
        return
    _NATIVE.enter()
    try:
        yield
    finally:
        _NATIVE.exit()

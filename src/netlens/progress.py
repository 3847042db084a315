"""Progress reporting: one protocol for every analyzer, rendered by the edges.

Analyzers never draw bars or print. They are handed a :class:`Progress` and call::

    progress.note("evaluate will forward-pass 8,448 images")
    with progress.task("evaluate", total=64) as advance:
        for batch in batches:
            ...
            advance(len(batch))

The CLI renders it with rich on a terminal and as plain lines when piped (:class:`LineProgress`),
Jupyter with a notebook bar, and ``quiet`` with nothing (:class:`NullProgress`).
:func:`auto_progress` picks one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any, Protocol, runtime_checkable

__all__ = [
    "Advance",
    "LineProgress",
    "NullProgress",
    "Progress",
    "RichProgress",
    "auto_progress",
    "in_notebook",
]

Advance = Callable[[int], None]


@runtime_checkable
class Progress(Protocol):
    """Where an analyzer reports how far it got."""

    def task(self, label: str, total: int | None = None, unit: str = "images") -> Any:
        """A context manager yielding ``advance(n)``; ``total`` None means unknown."""

    def note(self, text: str) -> None:
        """One line of information before or between tasks (e.g. the planned cost)."""


class NullProgress:
    """Reports nothing (``quiet``)."""

    @contextmanager
    def task(self, label: str, total: int | None = None, unit: str = "images") -> Iterator[Advance]:
        yield _ignore

    def note(self, text: str) -> None:
        return None


def _ignore(n: int) -> None:
    return None


class LineProgress:
    """Plain lines for piped output and logs: after ``after`` seconds, one line per 10 % of
    the work or per ``every`` seconds, and a last one at the end (short tasks print nothing).

    Example line: ``evaluate: 32/64 images (50%, 12 s)``.
    """

    def __init__(
        self, stream: IO[str] | None = None, every: float = 10.0, after: float = 2.0
    ) -> None:
        self.stream = stream or sys.stderr
        self.every, self.after = every, after

    def note(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    @contextmanager
    def task(self, label: str, total: int | None = None, unit: str = "images") -> Iterator[Advance]:
        start = time.monotonic()
        state = {"done": 0, "said": start, "step": 0, "lines": 0}
        tenth = max(1, (total or 0) // 10)

        def advance(n: int) -> None:
            state["done"] += n
            now = time.monotonic()
            if now - start < self.after:
                return
            crossed = total and state["done"] // tenth > state["step"]
            if crossed or now - state["said"] >= self.every or not state["lines"]:
                state["step"], state["said"] = state["done"] // tenth, now
                state["lines"] += 1
                self._line(label, state["done"], total, unit, now - start)

        yield advance
        if state["lines"] and (total is None or state["step"] * tenth < state["done"]):
            self._line(label, state["done"], total, unit, time.monotonic() - start)

    def _line(self, label: str, done: int, total: int | None, unit: str, secs: float) -> None:
        of = f"/{total:,}" if total else ""
        pct = f"{done / total:.0%}, " if total else ""
        print(f"{label}: {done:,}{of} {unit} ({pct}{secs:.0f} s)", file=self.stream, flush=True)


class RichProgress:
    """A transient rich bar on a terminal (stderr by default)."""

    def __init__(self, console: Any = None) -> None:
        if console is None:
            from rich.console import Console

            console = Console(stderr=True, highlight=False)
        self.console = console

    def note(self, text: str) -> None:
        from rich.markup import escape

        self.console.print(escape(text), soft_wrap=True)

    @contextmanager
    def task(self, label: str, total: int | None = None, unit: str = "images") -> Iterator[Advance]:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(label, total=total)
            yield lambda n: bar.advance(task, n)


def in_notebook() -> bool:
    """True inside a Jupyter kernel (not a plain IPython terminal)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()  # type: ignore[attr-defined]
    except AttributeError:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def auto_progress(progress: Progress | bool | None = None, *, stream: IO[str] | None = None) -> Any:
    """The sink to use: ``progress`` itself, or one chosen for where we run.

    ``False``: nothing. ``None`` (the Python API's default): a notebook bar inside Jupyter,
    nothing elsewhere. ``True`` (the CLI unless ``--quiet``): a rich bar on a terminal, plain
    lines when the stream is piped, a notebook bar inside Jupyter.
    """
    if progress is False:
        return NullProgress()
    if progress is not None and progress is not True:
        return progress
    if in_notebook():
        try:
            from .render.notebook_progress import NotebookProgress
        except ImportError:  # pragma: no cover - the notebook sink ships with netlens
            return NullProgress()
        return NotebookProgress()
    if progress is None:
        return NullProgress()
    out = stream or sys.stderr
    return RichProgress() if getattr(out, "isatty", lambda: False)() else LineProgress(out)

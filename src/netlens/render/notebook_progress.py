"""Progress in Jupyter: an HTML bar updated in place, shown only for calls longer than ~2 s.

The sink follows netlens' progress protocol (``task(label, total, unit)`` yields
``advance(n)``; ``note(text)`` writes one line). It needs no ipywidgets: the bar is a display
output (``display(..., display_id=True)``) whose ``text/html`` (an HTML ``<progress>``) and
``text/plain`` are replaced as work advances, at most every ``interval`` seconds.

Example:
    >>> sink = NotebookProgress()
    >>> with sink.task("evaluate", total=512) as advance:
    ...     for batch in batches:
    ...         advance(len(batch))
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["NotebookProgress"]


class NotebookProgress:
    """Progress bars and notes for a Jupyter cell.

    Args:
        delay: seconds a task must run before its bar appears (short calls stay quiet).
        interval: least seconds between two redraws.
        clock: the time source (a test passes its own).
        display: ``IPython.display.display`` by default.
    """

    def __init__(
        self,
        *,
        delay: float = 2.0,
        interval: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        display: Callable[..., Any] | None = None,
    ) -> None:
        self.delay, self.interval, self.clock = delay, interval, clock
        self._display = display

    def display(self, bundle: dict[str, str]) -> Any:
        """Show a mime bundle as a new output; returns its handle (``.update(bundle)``)."""
        show = self._display
        if show is None:
            from IPython.display import display as show
        return show(bundle, raw=True, display_id=True)

    @contextmanager
    def task(
        self, label: str, total: int | None = None, unit: str = "images"
    ) -> Iterator[Callable[[int], None]]:
        """A bar for ``total`` items (None: unknown); yields ``advance(n)``."""
        bar = _Bar(self, label, total, unit)
        try:
            yield bar.advance
        except BaseException:
            bar.close(failed=True)
            raise
        bar.close(failed=False)

    def note(self, text: str) -> None:
        """One line in the cell's output (e.g. how many forward passes a call will make)."""
        print(text, flush=True)


class _Bar:
    """One task's state: counts, timing and the display handle once it is shown."""

    def __init__(self, sink: NotebookProgress, label: str, total: int | None, unit: str) -> None:
        self.sink, self.label, self.total, self.unit = sink, label, total, unit
        self.start = self.last = sink.clock()
        self.done = 0
        self.handle: Any = None

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = self.sink.clock()
        if self.handle is None:
            if now - self.start >= self.sink.delay:
                self.handle = self.sink.display(self.bundle(now))
                self.last = now
        elif now - self.last >= self.sink.interval:
            self.handle.update(self.bundle(now), raw=True)
            self.last = now

    def close(self, failed: bool) -> None:
        """The last redraw: done (or where it stopped); nothing for a task shorter than the delay.

        A long task whose first step came only at its end still gets its line.
        """
        now = self.sink.clock()
        if self.handle is not None:
            self.handle.update(self.bundle(now, final=True, failed=failed), raw=True)
        elif now - self.start >= self.sink.delay:
            self.sink.display(self.bundle(now, final=True, failed=failed))

    def bundle(self, now: float, final: bool = False, failed: bool = False) -> dict[str, str]:
        """``text/plain`` and ``text/html`` of the bar at time ``now``."""
        text = self.status(now, final, failed)
        value = "" if self.total is None else f' value="{self.done}" max="{max(self.total, 1)}"'
        bar = "" if final and not failed else f"<progress{value} style='width:220px'></progress> "
        colour = "#a33" if failed else "#333"
        markup = (
            f"<div style='font:12px sans-serif;color:{colour}'>{bar}"
            f"<b>{html.escape(self.label)}</b> {html.escape(text)}</div>"
        )
        return {"text/plain": f"{self.label}: {text}", "text/html": markup}

    def status(self, now: float, final: bool, failed: bool) -> str:
        """E.g. ``120/512 images · 12 s · ~40 s left``."""
        elapsed = now - self.start
        count = f"{self.done:,}" + ("" if self.total is None else f"/{self.total:,}")
        parts = [f"{count} {self.unit}", _duration(elapsed)]
        if failed:
            parts.append("stopped")
        elif final:
            parts.append("done")
        elif self.total and self.done:
            parts.append(f"~{_duration(elapsed * (self.total - self.done) / self.done)} left")
        return " · ".join(parts)


def _duration(seconds: float) -> str:
    """``8 s``, ``2 min 05 s``."""
    s = max(0, round(seconds))
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60:02d} s"

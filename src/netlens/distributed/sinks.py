"""Progress and row storage in a distributed run: rank 0 draws and writes, every rank checks.

Rank 0 draws the bar for the whole run; it sees only its own share, so each step counts
``world`` times (the ranks hold equal shares, give or take one batch) and the bar stops at its
total. The other ranks draw nothing. On every rank a progress step is also where a failure of
another rank is noticed (:meth:`Group.check`), so no rank computes on for long after one failed.

Rows that long studies keep for ``--resume`` (:mod:`netlens.storage`) are read and written by
rank 0 only; the other ranks get the rows rank 0 found, so every rank skips the same finished
units, whatever the number of processes that made them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..progress import Advance, NullProgress
from ..storage import Parse, RowStore
from .group import Group

__all__ = ["RankProgress", "RankStorage", "for_rank"]


class RankProgress:
    """A progress sink for one rank of ``group`` (see the module doc)."""

    def __init__(self, inner: Any, group: Group) -> None:
        self.inner = inner if group.main else NullProgress()
        self.group = group

    def note(self, text: str) -> None:
        self.inner.note(text)

    @contextmanager
    def task(self, label: str, total: int | None = None, unit: str = "images") -> Iterator[Advance]:
        state = {"done": 0}
        with self.inner.task(label, total, unit) as advance:

            def step(n: int) -> None:
                self.group.check()
                n = n * self.group.world
                if total is not None:
                    n = max(0, min(n, total - state["done"]))
                state["done"] += n
                advance(n)

            yield step


class RankStorage:
    """Rank 0 keeps the rows (``inner``); the other ranks mirror what rank 0 found."""

    def __init__(self, inner: Any, group: Group) -> None:
        self.inner, self.group = inner, group

    def rows(
        self, name: str, config: dict[str, Any], columns: Sequence[str], parse: Parse
    ) -> RowStore:
        store = self.inner.rows(name, config, columns, parse) if self.group.main else None
        found = self.group.broadcast(lambda: dict(store.rows))
        return store if store is not None else _Mirror(found)


class _Mirror:
    """Rows in memory: what rank 0 found, then what this rank finished."""

    def __init__(self, rows: dict[str, dict[str, Any]]) -> None:
        self.rows = dict(rows)

    def add(self, row: dict[str, Any]) -> None:
        self.rows[row["key"]] = row


def for_rank(progress: Any, storage: Any, group: Group) -> tuple[Any, Any]:
    """The progress sink and storage one rank of ``group`` uses (themselves in one process)."""
    if group.world == 1:
        return progress, storage
    return RankProgress(progress, group), RankStorage(storage, group)

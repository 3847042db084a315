"""Where long analyses keep finished rows, so an interrupted run resumes where it stopped.

Analyzers never write files; a study that produces rows one by one (ablation: one row per
unit) asks its :class:`Storage` for a :class:`RowStore` and adds each finished row to it. The
CLI passes a :class:`FolderStorage` (``--out DIR``, ``--resume``): rows go to ``DIR/NAME.csv``
as they finish, with the settings they were made with in ``DIR/NAME-config.json``. The Python
API's default, :class:`MemoryStorage`, keeps them in memory only.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from .errors import NetlensError

__all__ = ["FolderStorage", "MemoryStorage", "RowStore", "Storage"]

Parse = Callable[[str, str], Any]


class RowStore(Protocol):
    """Finished rows by key; ``add`` keeps one more (durably, for a folder)."""

    rows: dict[str, dict[str, Any]]

    def add(self, row: dict[str, Any]) -> None: ...


class Storage(Protocol):
    """Gives an analyzer a place for its rows."""

    def rows(
        self, name: str, config: dict[str, Any], columns: Sequence[str], parse: Parse
    ) -> RowStore: ...


class _MemoryRows:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def add(self, row: dict[str, Any]) -> None:
        self.rows[row["key"]] = row


class MemoryStorage:
    """Rows kept in memory only (nothing to resume from)."""

    def rows(
        self, name: str, config: dict[str, Any], columns: Sequence[str], parse: Parse
    ) -> RowStore:
        return _MemoryRows()


class FolderStorage:
    """Rows appended to ``folder/NAME.csv`` as they finish; ``resume`` keeps the ones there.

    A resume with other settings than the file's (``NAME-config.json``) is refused with one
    line naming the settings that differ.
    """

    def __init__(self, folder: str | Path, resume: bool = False) -> None:
        self.folder = Path(folder)
        self.resume = resume
        self.paths: list[Path] = []  # the row files opened so far (named when interrupted)

    def rows(
        self, name: str, config: dict[str, Any], columns: Sequence[str], parse: Parse
    ) -> RowStore:
        store = _CsvRows(self.folder, name, config, list(columns), parse, self.resume)
        self.paths.append(store.path)
        return store


class _CsvRows:
    def __init__(
        self,
        folder: Path,
        name: str,
        config: dict[str, Any],
        columns: list[str],
        parse: Parse,
        resume: bool,
    ) -> None:
        from .analyzers.base import to_jsonable

        self.path = folder / f"{name}.csv"
        self.config_path = folder / f"{name}-config.json"
        self.config, self.columns, self.parse = to_jsonable(config), columns, parse
        self.rows: dict[str, dict[str, Any]] = {}
        self._started = resume and self.path.exists()
        if self._started:
            self._load()

    def _start(self) -> None:
        """The files, made at the first row: a run refused before it leaves the folder as it
        was (an earlier run's result there included)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config, indent=2))
        with self.path.open("w", newline="") as fh:
            csv.DictWriter(fh, self.columns).writeheader()
        self._started = True

    def _load(self) -> None:
        old = json.loads(self.config_path.read_text()) if self.config_path.exists() else None
        if old != self.config:
            both = {*self.config, *(old or {})}
            diff = sorted(k for k in both if (old or {}).get(k) != self.config.get(k))
            raise NetlensError(
                f"{self.path} was made with other settings ({', '.join(diff) or 'no config'}); "
                "run without --resume to start afresh, or use another --out"
            )
        with self.path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("key"):
                    self.rows[row["key"]] = {k: self.parse(k, v) for k, v in row.items()}

    def add(self, row: dict[str, Any]) -> None:
        """Append one finished row, flushed at once so an interrupt loses nothing done."""
        from .output import csv_cell

        if not self._started:
            self._start()
        self.rows[row["key"]] = row
        cells = {k: csv_cell(row.get(k)) for k in self.columns}
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, self.columns).writerow(cells)

"""Where long analyses keep finished rows, so an interrupted run resumes where it stopped.

Analyzers never write files; a study that produces rows one by one (ablation: one row per
unit) asks its :class:`Storage` for a :class:`RowStore` and adds each finished row to it. The
CLI passes a :class:`FolderStorage` (``--out DIR``, ``--resume``): rows go to the hidden
``DIR/.NAME.rows.csv`` as they finish, each written whole, with the settings they were made with
in ``DIR/.NAME-config.json``; a finished run's rows become ``DIR/NAME.csv`` and
``DIR/NAME-config.json`` (:func:`finish_rows`), so an interrupted run never changes an earlier
run's files. The Python API's default, :class:`MemoryStorage`, keeps them in memory only.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from .errors import NetlensError

__all__ = ["FolderStorage", "MemoryStorage", "RowStore", "Storage", "finish_rows"]

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
    """Rows appended to ``folder/.NAME.rows.csv`` as they finish; ``resume`` keeps the ones
    there (or, when none is there, those of a finished run's ``NAME.csv``).

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


def _work_paths(folder: Path, name: str) -> tuple[Path, Path]:
    """The rows and settings of an unfinished run (hidden: no result's files)."""
    return folder / f".{name}.rows.csv", folder / f".{name}-config.json"


def _done_paths(folder: Path, name: str) -> tuple[Path, Path]:
    """The rows and settings of a finished run."""
    return folder / f"{name}.csv", folder / f"{name}-config.json"


def finish_rows(
    folder: str | Path, name: str, config: dict[str, Any], *, keep_rows: bool
) -> list[Path]:
    """The run with ``config`` finished: its settings become ``NAME-config.json`` and its rows
    ``NAME.csv`` (``keep_rows``; else they are removed: the result's own ``NAME.csv``, committed
    by :class:`netlens.output.OutputSet`, has them). Another run's unfinished rows stay.
    Returns the files put in place."""
    from .analyzers.base import to_jsonable

    rows, settings = _work_paths(Path(folder), name)
    done_rows, done_settings = _done_paths(Path(folder), name)
    try:
        if json.loads(settings.read_text()) != to_jsonable(config):
            return []
    except (OSError, ValueError):
        return []
    placed = []
    if keep_rows and rows.exists():
        os.replace(rows, done_rows)
        placed.append(done_rows)
    rows.unlink(missing_ok=True)
    os.replace(settings, done_settings)
    return [*placed, done_settings]


def _write_whole(path: Path, text: str) -> None:
    """``path`` with ``text``, or as it was: written aside, synced, then renamed."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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

        self.folder, self.name = folder, name
        self.path, self.config_path = _work_paths(folder, name)
        self.config, self.columns, self.parse = to_jsonable(config), columns, parse
        self.rows: dict[str, dict[str, Any]] = {}
        self._started = False
        if resume:
            self._load()

    def _start(self) -> None:
        """The files, made at the first row with the rows kept so far: a run refused before
        it leaves the folder as it was (an earlier run's result there included)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_whole(self.config_path, json.dumps(self.config, indent=2))
        header = {k: k for k in self.columns}
        _write_whole(self.path, self._lines([header, *self.rows.values()]))
        self._started = True

    def _lines(self, rows: list[dict[str, Any]]) -> str:
        from .output import csv_cell

        buf = io.StringIO()
        writer = csv.DictWriter(buf, self.columns)
        for row in rows:
            writer.writerow({k: csv_cell(row.get(k)) for k in self.columns})
        return buf.getvalue()

    def _load(self) -> None:
        rows_path, config_path = self.path, self.config_path
        if not rows_path.exists():  # no unfinished run: go on from a finished one
            rows_path, config_path = _done_paths(self.folder, self.name)
            if not rows_path.exists():
                return
        old = json.loads(config_path.read_text()) if config_path.exists() else None
        if old != self.config:
            both = {*self.config, *(old or {})}
            diff = sorted(k for k in both if (old or {}).get(k) != self.config.get(k))
            raise NetlensError(
                f"{rows_path} was made with other settings ({', '.join(diff) or 'no config'}); "
                "run without --resume to start afresh, or use another --out"
            )
        with rows_path.open(encoding="utf-8", newline="") as fh:
            text = fh.read()
        header, *lines = list(csv.reader(io.StringIO(text))) or [[]]
        if lines and not text.endswith("\n"):
            lines.pop()  # a row cut off (a full disk, a kill): its unit is run again
        for cells in lines:  # a row of the wrong length is a damaged one: run again
            row = dict(zip(header, cells, strict=False))
            if len(cells) == len(header) and row.get("key"):
                self.rows[row["key"]] = {k: self.parse(k, v) for k, v in row.items()}

    def add(self, row: dict[str, Any]) -> None:
        """Append one finished row, whole (one write, synced) so an interrupt loses nothing
        done and leaves no row half written."""
        self.rows[row["key"]] = row
        if not self._started:
            self._start()  # the rows kept so far and this one
            return
        data = self._lines([row]).encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            while data:  # a short write (a full disk) is followed by the error
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)

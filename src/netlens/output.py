"""Writing results: whole sets of files or nothing, never two runs mixed in one folder.

A result is written through an :class:`OutputSet`: every file goes to a hidden staging folder
inside the output folder first, with the manifest ``NAME.manifest.json`` listing exactly this
run's files with their SHA-256; only when all are written (a full disk stops it here) are they
renamed into place, the files of the previous run of the same analyzer that this run does not
rewrite removed (with a warning that says how many), and the manifest renamed last. An error (or
Ctrl-C, or SIGTERM from the CLI) part way leaves the folder as it was.

Runs are kept apart by :func:`folder_lock`, an OS file lock on ``DIR/.netlens.lock`` (released by
the OS if the process dies): the CLI holds it for the whole command, so a second command writing
into the same folder at the same time stops at once with one line; ``Result.save`` holds it
while it stages and commits. Who takes the lock removes staging folders a killed run left. A
folder that a run killed outright (SIGKILL) made and left holding only its lock file is removed
by the ``--distributed`` launcher, else by the next run into it that writes nothing either.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import stat
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .errors import NetlensError, NetlensWarning

__all__ = ["OutputBusyError", "OutputSet", "csv_text", "folder_lock", "npy_bytes", "safe_name"]

LOCK_NAME = ".netlens.lock"
_HELD: set[Path] = set()  # folders this process holds (a re-entrant lock per process)


class OutputBusyError(NetlensError):
    """Another netlens run is writing into the same output folder."""


def layer_stem(layer: str) -> str:
    """A layer's part of a figure's file name: dots as underscores (``layer4_1``), file-safe
    (onnx2torch's ``Conv/0``; see :func:`safe_name`)."""
    return safe_name(layer.replace(".", "_"))


def safe_name(text: str, limit: int = 80) -> str:
    """A printable, file-name-safe version of ``text`` (class names, layers, image stems);
    different texts never give the same name (see :func:`netlens.naming.safe_component`).

    Example:
        >>> safe_name("layer4.1")
        'layer4.1'
    """
    from .naming import safe_component

    return safe_component(str(text), max_bytes=limit)


def make_folder(path: Path) -> None:
    """``path`` as a folder, made with its parents; one line when it, or a folder on the way
    to it, is a file (``--out results.csv``)."""
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                from .naming import display_path

                raise NetlensError(
                    f"{display_path(part)} is a file, not a folder: outputs are written into a "
                    "folder; give --out a folder's path (a new one is made)"
                )
            break
    path.mkdir(parents=True, exist_ok=True)


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold the output folder's lock; a second holder in another process fails with one line.

    Taking it removes the staging folders of runs that were killed (nobody else writes there)."""
    try:
        path = Path(folder).resolve()
    except (RuntimeError, OSError):  # a symlink loop (RuntimeError before Python 3.13)
        from .naming import display_path

        raise NetlensError(
            f"{display_path(Path(folder))} is a symlink loop, not a folder; give --out a "
            "folder's path"
        ) from None
    if path in _HELD:
        yield path
        return
    created = not path.exists() or _left_empty(path)  # (a killed run's leftover: its lock)
    make_folder(path)
    if created:
        from .distributed.parent import note_created

        note_created(path)  # a --distributed worker's launcher removes it if left empty
    lock = (path / LOCK_NAME).open("a+")
    try:
        _lock(lock, path)
        for stale in path.glob(".netlens-staging-*"):
            shutil.rmtree(stale, ignore_errors=True)
        _HELD.add(path)
        try:
            yield path
        finally:
            _HELD.discard(path)
            if created and [p.name for p in path.iterdir()] == [LOCK_NAME]:
                (path / LOCK_NAME).unlink()  # a run that wrote nothing leaves no folder
                path.rmdir()
    finally:
        lock.close()


def _left_empty(path: Path) -> bool:
    """``path`` is a folder holding only a lock file (and staging folders): what a run that
    was killed outright (SIGKILL) in a folder it made leaves behind."""
    try:
        names = [p.name for p in path.iterdir()] if path.is_dir() else []
    except OSError:
        return False
    return LOCK_NAME in names and all(
        n == LOCK_NAME or n.startswith(".netlens-staging-") for n in names
    )


def remove_if_left_empty(folder: str | Path) -> None:
    """Remove ``folder`` when it holds only a lock file nobody holds (and staging folders):
    left by a run killed outright in a folder it made. Best effort, never raises."""
    path = Path(folder)
    if path in _HELD or not _left_empty(path):
        return
    try:
        with (path / LOCK_NAME).open("a+") as lock:
            _lock(lock, path)
            for stale in path.glob(".netlens-staging-*"):
                shutil.rmtree(stale, ignore_errors=True)
            if [p.name for p in path.iterdir()] == [LOCK_NAME]:
                (path / LOCK_NAME).unlink()
                path.rmdir()
    except (OSError, NetlensError):  # held by a run, or not ours to remove: leave it
        return


def _lock(handle: Any, path: Path) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, runs are not kept apart
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise OutputBusyError(
            f"another netlens run is writing to {path}; wait for it to finish or give "
            "another --out folder"
        ) from None


class OutputSet:
    """The files of one result, staged and then committed together (see the module doc).

    Example:
        >>> with OutputSet("out", "cam") as files:
        ...     files.write_bytes("a.png", png)
        >>> files.written  # final paths, in order
    """

    def __init__(self, folder: str | Path, name: str) -> None:
        self.folder = Path(folder)
        self.name = name
        self.written: list[Path] = []
        self._names: list[str] = []
        self._stage: Path | None = None
        self._lock = ExitStack()

    def __enter__(self) -> OutputSet:
        self._lock.enter_context(folder_lock(self.folder))
        try:
            self._stage = Path(tempfile.mkdtemp(prefix=".netlens-staging-", dir=self.folder))
        except BaseException:
            self._lock.close()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        stage, self._stage = self._stage, None
        with self._lock:
            try:
                if exc_type is None and stage is not None:
                    self._commit(stage)
            finally:
                if stage is not None:
                    shutil.rmtree(stage, ignore_errors=True)

    # -- staging ---------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        """Where to write ``name`` now (in the staging folder); it lands at ``folder/name``."""
        if self._stage is None:
            raise NetlensError("OutputSet used outside its with-block")
        if "/" in name or name.startswith("."):
            raise NetlensError(f"output file name {name!r} must be a plain name")
        if name in self._names:
            raise NetlensError(f"two outputs of one result are both called {name!r}")
        self._names.append(name)
        return self._stage / name

    @property
    def names(self) -> list[str]:
        """The file names staged so far, in order."""
        return list(self._names)

    def write_bytes(self, name: str, data: bytes) -> Path:
        self.path(name).write_bytes(data)
        return self.folder / name

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode("utf-8"))

    # -- commit ----------------------------------------------------------------------------
    def _commit(self, stage: Path) -> None:
        manifest = self.folder / f"{self.name}.manifest.json"
        previous = _listed(manifest)
        entries = []
        for name in self._names:
            data = (stage / name).read_bytes()
            entries.append({"file": name, "bytes": len(data), "sha256": _sha(data)})
        tmp = stage / ".manifest"  # staged first: a full disk stops the commit before a rename
        tmp.write_text(json.dumps({"result": self.name, "files": entries}, indent=2))
        for name in [*self._names, manifest.name]:  # all checked before the first rename
            _check_target(self.folder / name)
        stale = sorted(n for n in previous - set(self._names) if (self.folder / n).is_file())
        moves = [(stage / n, self.folder / n) for n in self._names] + [(tmp, manifest)]
        _replace_all(moves, [self.folder / n for n in stale], stage)
        self.written += [dst for _, dst in moves]
        if stale:  # one run of an analyzer per folder: said, never silent
            warnings.warn(
                f"{self.folder}/ held an earlier {self.name} run: its {len(stale)} files that "
                f"this run does not rewrite ({stale[0]}{', ...' if len(stale) > 1 else ''}) "
                "were removed, one run per folder; write to another folder to keep both",
                NetlensWarning,
                stacklevel=2,
            )


def _check_target(target: Path) -> None:
    """One line when something other than a file (a folder, a pipe) holds an output's name:
    said before the first rename, so nothing has moved yet."""
    try:
        st = target.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
        return
    from .naming import display_path

    what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a file"
    raise NetlensError(
        f"{display_path(target)} is {what}, and netlens writes a result file of that name "
        "there; move it away or give another --out folder"
    )


def _replace_all(moves: list[tuple[Path, Path]], remove: list[Path], stage: Path) -> None:
    """Rename each staged file onto its target and take ``remove`` away, all or nothing: what
    a rename would replace, and what is removed, is first moved aside into ``stage`` (removed
    with it afterwards); a failure part way (an error, Ctrl-C) puts every file back."""
    done: list[tuple[Path, Path | None]] = []  # (target, its old file set aside, or None)
    try:
        for i, path in enumerate(remove):
            done.append((path, stage / f".old-stale-{i}"))  # noted first: undone if it moved
            os.replace(path, stage / f".old-stale-{i}")
        for i, (src, dst) in enumerate(moves):
            aside = stage / f".old-{i}" if os.path.lexists(dst) else None
            done.append((dst, aside))
            if aside is not None:
                os.replace(dst, aside)
            os.replace(src, dst)
    except BaseException:
        for dst, aside in reversed(done):
            if aside is not None and not os.path.lexists(aside):
                continue  # never moved aside: the target is as it was
            try:
                if os.path.lexists(dst) and not os.path.isdir(dst):
                    os.unlink(dst)  # this run's file
                if aside is not None:
                    os.replace(aside, dst)
            except OSError:  # pragma: no cover - best effort: the error below is what counts
                pass
        raise


def _listed(manifest: Path) -> set[str]:
    """File names the previous run's manifest lists (plain names only: never outside)."""
    try:
        files = json.loads(manifest.read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return set()
    names = {str(f.get("file", "")) for f in files if isinstance(f, dict)}
    return {n for n in names if n and "/" not in n and not n.startswith(".")}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def npy_bytes(arr: np.ndarray) -> bytes:
    """An array as the bytes of a ``.npy`` file (no pickles)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr), allow_pickle=False)
    return buf.getvalue()


def csv_text(rows: list[dict[str, Any]]) -> str:
    """A list of row dicts as CSV text (columns in first-seen order; lists/dicts as JSON)."""
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: csv_cell(row.get(k)) for k in cols})
    return buf.getvalue()


def csv_cell(v: Any) -> Any:
    """A value as a CSV cell: JSON for lists and dicts, empty for None; a number that is not
    finite as ``nan``, ``inf`` or ``-inf`` (Python's and pandas' spellings), so an overflowed
    score is told from a missing one (the JSON, strict, has null for both)."""
    from .analyzers.base import to_jsonable

    if isinstance(v, np.generic) or (getattr(v, "ndim", None) == 0 and hasattr(v, "item")):
        v = v.item()  # a numpy or torch scalar
    if isinstance(v, float) and not np.isfinite(v):
        return "nan" if np.isnan(v) else ("inf" if v > 0 else "-inf")
    v = to_jsonable(v)
    return json.dumps(v) if isinstance(v, (list, dict)) else ("" if v is None else v)

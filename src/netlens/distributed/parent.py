"""A worker's tie to the ``--distributed`` launcher that started it.

``netlens ... --distributed N`` (:mod:`netlens.distributed.launch`) starts its workers through
torch's launcher, which puts each worker in a session of its own: a launcher killed outright
(SIGKILL, which it cannot catch) would leave them running on, and rank 0 would write a complete
result set after the command had already failed. The launcher therefore passes its PID to the
workers (``NETLENS_LAUNCHER_PID``), and each worker

- on Linux, asks the kernel for SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``), when
  its parent is the launcher (torch's agent runs inside the launcher process, so it is): the
  worker then unwinds as when the launcher stops it, writing nothing;
- everywhere, looks at its exchanges whether the launcher is still there
  (:func:`launcher_gone`) and stops quietly when it is not.

The same variable tells a worker that the launcher speaks for the run at Ctrl-C: the worker
stops without a line of its own (:func:`netlens.distributed.setup.exit_on_sigterm`). A worker
remembers the signal that stopped it (:func:`stopping`): its ``SystemExit`` is raised again at
the next exchange when something on the way swallowed it.
"""

from __future__ import annotations

import os
import signal
import sys

__all__ = [
    "COMMAND_ENV",
    "LAUNCHER_ENV",
    "bind_to_launcher",
    "launched",
    "launcher_gone",
    "note_created",
    "note_stop",
    "stopping",
    "typed_command",
]

LAUNCHER_ENV = "NETLENS_LAUNCHER_PID"
COMMAND_ENV = "NETLENS_COMMAND"  # the launcher's arguments as typed (JSON), for run headers
CREATED_ENV = "NETLENS_CREATED_FOLDERS"  # a file of the output folders the workers made
_PR_SET_PDEATHSIG = 1
_STATE: dict[str, int | bool] = {}  # the launcher's pid and whether it is this process's parent
_STOP: list[int] = []  # the signal that stopped this worker, once one did


def launched() -> int | None:
    """The PID of the ``--distributed`` launcher that started this process, else None."""
    text = os.environ.get(LAUNCHER_ENV, "").strip()
    try:
        pid = int(text)
    except ValueError:
        return None
    return pid if pid > 1 and pid != os.getpid() else None


def typed_command() -> list[str] | None:
    """In a ``--distributed`` worker, the arguments the user typed (``--distributed N``
    included: the worker's own argv lacks it); None elsewhere."""
    import json

    if launched() is None:
        return None
    try:
        args = json.loads(os.environ.get(COMMAND_ENV, ""))
    except ValueError:
        return None
    ok = isinstance(args, list) and all(isinstance(a, str) for a in args)
    return args if ok else None


def note_created(folder: str | os.PathLike[str]) -> None:
    """Tell the ``--distributed`` launcher that this worker made output folder ``folder``, so
    that it removes the folder if a killed worker left nothing in it but its lock file.
    No-op outside a worker; best effort."""
    notes = os.environ.get(CREATED_ENV)
    if launched() is None or not notes:
        return
    try:
        with open(notes, "a", encoding="utf-8") as f:
            f.write(os.fspath(folder) + "\n")
    except OSError:
        pass


def bind_to_launcher() -> None:
    """End this worker (SIGTERM) when its launcher dies; a worker whose launcher is already gone
    stops at once, quietly. No-op outside a ``--distributed`` worker; idempotent."""
    pid = launched()
    if pid is None or _STATE.get("pid") == pid:
        return
    parent = os.getppid() == pid
    _STATE.update(pid=pid, parent=parent)
    if parent and sys.platform.startswith("linux"):
        _set_parent_death_signal(signal.SIGTERM)
    if launcher_gone():  # it died before the kernel was asked: nothing would tell this worker
        raise SystemExit(128 + signal.SIGTERM)


def launcher_gone() -> bool:
    """Whether the launcher that started this worker is gone (False outside such a worker)."""
    pid = launched()
    if pid is None:
        return False
    if _STATE.get("pid") != pid:  # not bound (bind_to_launcher): look now
        _STATE.update(pid=pid, parent=os.getppid() == pid)
    if _STATE.get("parent"):
        return os.getppid() != pid  # an orphan is adopted by init (or a subreaper)
    return not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _set_parent_death_signal(signum: int) -> None:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
    except (OSError, AttributeError):  # no prctl here: the checks at exchanges remain
        pass


def note_stop(signum: int) -> None:
    """Remember that signal ``signum`` stopped this worker (its ``SystemExit`` is on its way)."""
    if not _STOP:
        _STOP.append(signum)


def stopping() -> int | None:
    """The signal that stopped this worker, if one did: a ``SystemExit`` that code on the way
    swallowed (a plugin loader keeps going when a plugin exits) is raised again at the next
    exchange (:meth:`netlens.distributed.Group.check`), and an error that follows it is not
    said as the run's failure."""
    return _STOP[0] if _STOP else None

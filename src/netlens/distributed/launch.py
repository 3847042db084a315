"""``netlens COMMAND ... --distributed N``: the command in N processes, through torchrun's API.

The command line is re-launched with ``python -m netlens COMMAND ...`` (``--distributed``
removed) by :func:`torch.distributed.launcher.api.elastic_launch` on a local rendezvous — what
``torchrun --standalone --nproc-per-node N -m netlens COMMAND ...`` does — so there is one code
path: every worker joins the job as under torchrun (:mod:`netlens.distributed.setup`). Each
worker gets ``cores / N`` threads unless ``--threads`` or ``NETLENS_THREADS`` says otherwise.

The workers report for themselves: rank 0 prints the result, the first rank that fails prints
its one line. The launcher stays silent (torch's launcher logs included) except when a worker
died without a word (killed by a signal, e.g. the out-of-memory killer): then it names the rank
and the signal; and at Ctrl-C or SIGTERM, where it says ``interrupted`` once for the run, with
one process's exit status (130, 128 + 15). The workers end with the launcher, also when it is
killed outright (:mod:`netlens.distributed.parent`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import NetlensError
from .group import EXIT_LOST
from .parent import COMMAND_ENV, CREATED_ENV, LAUNCHER_ENV
from .setup import in_torchrun

__all__ = ["relaunch", "strip_flag"]


def strip_flag(argv: list[str], flag: str = "--distributed") -> list[str]:
    """``argv`` without ``flag VALUE`` / ``flag=VALUE``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def relaunch(nproc: int, argv: list[str] | None = None) -> int:
    """Run ``netlens ARGV`` in ``nproc`` local processes; returns the run's exit status."""
    if in_torchrun():
        raise NetlensError(
            "--distributed inside torchrun: torchrun already started the processes; drop "
            "--distributed"
        )
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    typed = list(sys.argv[1:] if argv is None else argv)
    args = ["-m", "netlens", *strip_flag(typed)]
    threads = str(max(1, (os.cpu_count() or 1) // nproc))
    os.environ.setdefault("NETLENS_THREADS", threads)
    os.environ.setdefault("OMP_NUM_THREADS", os.environ["NETLENS_THREADS"])
    logs = tempfile.mkdtemp(prefix="netlens-launch-")  # the launcher's folder, removed after
    config = LaunchConfig(
        logs_specs=DefaultLogsSpecs(log_dir=logs),
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"netlens-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.1,
    )
    # the workers end with this process (parent.py) and leave Ctrl-C to it
    before = {k: os.environ.get(k) for k in (LAUNCHER_ENV, COMMAND_ENV, CREATED_ENV)}
    os.environ[LAUNCHER_ENV] = str(os.getpid())
    os.environ[COMMAND_ENV] = json.dumps(typed)  # the run header's command, as typed
    created = os.path.join(logs, "created-folders.txt")
    os.environ[CREATED_ENV] = created
    handlers = {s: signal.getsignal(s) for s in _HANDLED if s is not None}
    handlers = {s: h for s, h in handlers.items() if h is not None}
    try:
        with _quiet_launcher():
            elastic_launch(config, sys.executable)(*args)
    except ChildFailedError as exc:
        return _exit_status(exc.failures)
    except SignalException as exc:  # Ctrl-C or a kill of the launcher: the workers were stopped
        return _interrupted(int(exc.sigval))
    finally:
        _remove_left_empty(created)
        shutil.rmtree(logs, ignore_errors=True)
        for signum, handler in handlers.items():  # torch's launcher replaced them
            signal.signal(signum, handler)
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return 0


def _remove_left_empty(notes: str) -> None:
    """Remove the output folders the workers made that hold nothing but the lock file (a
    worker killed outright, SIGKILL, could not remove its own)."""
    from ..output import remove_if_left_empty

    try:
        with open(notes, encoding="utf-8") as f:
            folders = dict.fromkeys(line.rstrip("\n") for line in f if line.strip())
    except OSError:
        return
    for folder in folders:
        remove_if_left_empty(folder)


_HANDLED = tuple(getattr(signal, n, None) for n in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT"))


def _interrupted(signum: int) -> int:
    """One process's line and status for signal ``signum``: ``interrupted`` and 130 at Ctrl-C,
    ``interrupted (SIGTERM)`` and 143 at SIGTERM (128 + N)."""
    said = "" if signum == signal.SIGINT else f" ({_signal_name(signum)})"
    print(f"interrupted{said}", file=sys.stderr)
    return 128 + signum


def _exit_status(failures: dict[int, object]) -> int:
    """The run's status from the failed workers; names a worker that died without a word.

    A worker that only lost contact with the others (status ``EXIT_LOST``) said nothing: the
    worker that died (by a signal, SIGTERM included) is named instead.
    """
    codes = {rank: _as_signal(int(getattr(f, "exitcode", 1))) for rank, f in failures.items()}
    said = [c for c in codes.values() if c > 0 and c != EXIT_LOST]
    if said:  # a worker said why (or reported skipped items, status 3): its status is the run's
        return 1 if 1 in said else max(said)
    died = {rank: code for rank, code in codes.items() if code < 0}
    if not died:
        print(
            "error: the processes lost contact with each other and the run was stopped; "
            "nothing was written",
            file=sys.stderr,
        )
        return 1
    # a worker killed by another signal (SIGKILL: out of memory) is the one that died; among
    # SIGTERMs, the launcher lists first the worker that was stopped, then those it stopped
    order = list(died.items())
    rank, code = min(order, key=lambda kv: (kv[1] == -signal.SIGTERM, order.index(kv)))
    name = _signal_name(-code)
    print(
        f"error: rank {rank} died ({name}) and the run was stopped; nothing was written"
        f"{' (out of memory?)' if -code == signal.SIGKILL else ''}",
        file=sys.stderr,
    )
    return 1


def _as_signal(code: int) -> int:
    """Exit status 128+N (a worker that unwound on signal N) as the launcher's -N."""
    return -(code - 128) if 128 < code < 160 else code


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


_TORCH_LOGGERS = (
    "torch.distributed.elastic",
    "torch.distributed.launcher",
    "torch.distributed.run",
)
# modules torch's launcher imports only once it runs: their loggers get a level of their own then
_LATE_MODULES = (
    "torch.distributed.elastic.rendezvous.c10d_rendezvous_backend",
    "torch.distributed.elastic.rendezvous.dynamic_rendezvous",
    "torch.distributed.elastic.rendezvous.static_tcp_rendezvous",
    "torch.distributed.elastic.rendezvous.etcd_rendezvous",
    "torch.distributed.elastic.agent.server.local_elastic_agent",
)


class _DropTorchLaunch(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _is_torch_launch(record.name)


def _is_torch_launch(name: str) -> bool:
    return any(name == n or name.startswith(n + ".") for n in _TORCH_LOGGERS)


@contextmanager
def _quiet_launcher() -> Iterator[None]:
    """Inside: torch's launcher logs nothing (worker failures, "Received 2 death signal, shutting
    down workers"): the launcher says at most one line, its own. ``NETLENS_DEBUG=1`` keeps them.

    Each of torch's module loggers has a level of its own (``LOGLEVEL``, default WARNING), so
    every one of them is raised, and a filter on the handlers the records reach drops those of
    loggers made later.
    """
    if os.environ.get("NETLENS_DEBUG") == "1":
        yield
        return
    import importlib

    for module in _LATE_MODULES:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - not in this torch (or its extras): nothing to quiet
            pass
    levels = {}
    for name in [*_TORCH_LOGGERS, *list(logging.root.manager.loggerDict)]:
        logger = logging.getLogger(name)
        if _is_torch_launch(name) and name not in levels:
            levels[name] = logger.level
            logger.setLevel(logging.CRITICAL + 1)
    drop = _DropTorchLaunch()
    handlers = [logging.lastResort] if logging.lastResort is not None else []
    for name in ("torch.distributed", "torch", ""):
        handlers += logging.getLogger(name).handlers
    for handler in handlers:
        handler.addFilter(drop)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(drop)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)

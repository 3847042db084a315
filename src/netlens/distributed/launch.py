"""``netlens COMMAND ... --distributed N``: the command in N processes, through torchrun's API.

The command line is re-launched with ``python -m netlens COMMAND ...`` (``--distributed``
removed) by :func:`torch.distributed.launcher.api.elastic_launch` on a local rendezvous — what
``torchrun --standalone --nproc-per-node N -m netlens COMMAND ...`` does — so there is one code
path: every worker joins the job as under torchrun (:mod:`netlens.distributed.setup`). Each
worker gets ``cores / N`` threads unless ``--threads`` or ``NETLENS_THREADS`` says otherwise.

The workers report for themselves: rank 0 prints the result, the first rank that fails prints
its one line. The launcher stays silent except when a worker died without a word (killed by a
signal, e.g. the out-of-memory killer): then it names the rank and the signal.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import uuid

from ..errors import NetlensError
from .group import EXIT_LOST
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

    args = ["-m", "netlens", *strip_flag(list(sys.argv[1:] if argv is None else argv))]
    threads = str(max(1, (os.cpu_count() or 1) // nproc))
    os.environ.setdefault("NETLENS_THREADS", threads)
    os.environ.setdefault("OMP_NUM_THREADS", os.environ["NETLENS_THREADS"])
    _quiet_launcher()
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
    try:
        elastic_launch(config, sys.executable)(*args)
    except ChildFailedError as exc:
        return _exit_status(exc.failures)
    except SignalException:  # Ctrl-C or a kill of the launcher: the workers were stopped
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(logs, ignore_errors=True)
    return 0


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


def _quiet_launcher() -> None:
    """The launcher's own log lines (worker failures, shutdown) stay out of the one-line promise."""
    if os.environ.get("NETLENS_DEBUG") == "1":
        return
    for name in (
        "torch.distributed.elastic",
        "torch.distributed.launcher",
        "torch.distributed.run",
    ):
        logging.getLogger(name).setLevel(logging.CRITICAL)

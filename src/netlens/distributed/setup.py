"""Joining the job ``torchrun`` started: process group, backend and one device per rank.

``torchrun`` (or ``netlens ... --distributed N``, which launches through the same API) starts
the processes and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address.
:func:`join_from_env` turns that into the default process group — ``nccl`` when the ranks run on
GPUs (rank ``r`` on ``cuda:LOCAL_RANK``), ``gloo`` on CPUs — with the netlens timeout, and
returns the :class:`~netlens.distributed.group.Group` analyzers use. Outside torchrun it returns
the single-process group and imports nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import NetlensError
from .group import Group, timeout_seconds

__all__ = ["exit_on_sigterm", "in_torchrun", "join_from_env", "rank_device"]


def in_torchrun() -> bool:
    """True in a process that torchrun started as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


@contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """Inside: leave by ``SystemExit(128 + 15)`` on SIGTERM, so ``finally`` blocks clean up.

    torchrun stops the other workers with SIGTERM when one fails; a worker that then unwinds
    releases its output lock and removes the folder it made but never wrote into. Once the
    command is over (the interpreter's exit handlers may be running), a SIGTERM ends the process
    at once and quietly: raising inside an exit handler would print a traceback.

    In a worker of ``--distributed N`` (:mod:`.parent`) the worker is also tied to the
    launcher's life, and Ctrl-C (SIGINT, which the launcher passes on) unwinds it the same way,
    without a line: the launcher says ``interrupted`` once for the run.
    """
    import signal
    import sys

    from ..signals import in_finalizer, resend_later
    from .parent import bind_to_launcher, launched, note_stop, stopping

    def unwind(signum: int, frame: object) -> None:
        if in_finalizer(frame):  # raised here, the exit would be printed and dropped
            resend_later(signum)
            return
        note_stop(signum)
        sys.exit(128 + signum)

    def leave(signum: int, frame: object) -> None:
        os._exit(128 + signum)

    quiet = (signal.SIGTERM, signal.SIGINT) if launched() is not None else (signal.SIGTERM,)
    for signum in quiet:
        signal.signal(signum, unwind)
    try:
        bind_to_launcher()
        yield
    finally:
        for signum in quiet:
            signal.signal(signum, leave)
        stopped = stopping()
        if stopped is not None and launched() is not None:
            _exit_now(128 + stopped)


def _exit_now(code: int) -> None:
    """End a worker the launcher stopped (or lost) once it has unwound: exit handlers run, the
    interpreter's seconds-long teardown of torch does not (the launcher waits for it)."""
    import atexit
    import sys

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream: nothing left to say
            pass
    os._exit(code)


def rank_device(device: str | None, local_rank: int) -> str:
    """The device of the rank with ``local_rank``: its own GPU when there are GPUs.

    ``None`` or ``cuda`` → ``cuda:LOCAL_RANK`` when CUDA is present (else ``cpu``); ``cpu`` and
    ``mps`` stay. A single named GPU (``cuda:1``) is refused: every rank would use it.
    """
    import torch

    wanted = (device or "").strip().lower()
    if wanted in ("", "cuda"):
        if torch.cuda.is_available():
            if local_rank >= torch.cuda.device_count():
                raise NetlensError(
                    f"rank with LOCAL_RANK {local_rank} has no GPU of its own "
                    f"({torch.cuda.device_count()} visible); start at most that many processes "
                    "per node (--nproc-per-node)"
                )
            return f"cuda:{local_rank}"
        if wanted == "cuda":
            raise NetlensError("--device cuda: no CUDA device is available; use --device cpu")
        return "cpu"
    if wanted.startswith("cuda:"):
        raise NetlensError(
            f"--device {device}: in a distributed run every process takes its own GPU "
            "(cuda:LOCAL_RANK); give --device cuda or leave it out"
        )
    return wanted


def join_from_env(device: str | None = None) -> tuple[Group, str | None]:
    """The Group of this process and the device it computes on (see the module doc)."""
    if not in_torchrun():
        return Group(), device
    from datetime import timedelta

    from .parent import bind_to_launcher

    bind_to_launcher()  # a worker of --distributed N ends with its launcher

    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = rank_device(device, local)
    if not dist.is_initialized():
        if dev.startswith("cuda"):
            torch.cuda.set_device(local)
        backend = "nccl" if dev.startswith("cuda") else "gloo"
        secs = timeout_seconds() + 60  # netlens' own timeout (which names late ranks) fires first
        dist.init_process_group(backend, timeout=timedelta(seconds=secs))
    return Group.join(), dev

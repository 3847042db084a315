"""Independent batches on threads of their own, each running torch single-threaded.

On a busy machine torch's parallel operators wait at every operator for their slowest thread,
which the scheduler may have parked, so a forward pass on two intra-op threads can take several
times as long as on one (measured: deletion curves 7.5× slower at load 8 on 2 cores). Batches
that do not depend on each other (masked or perturbed copies of images, groups of linear
systems) have nothing to wait for when each runs on its own thread, one operator thread each:
a busy machine slows them in proportion, and a quiet one runs them as fast.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

__all__ = ["check_workers", "map_batches", "one_thread_per_op"]

T = TypeVar("T")
R = TypeVar("R")


def check_workers(flag: str, n: int) -> int:
    """``n`` threads or processes, refused with one line beyond 4 per core (at least 64 are
    allowed): a mistyped count would otherwise start thousands and stall the machine."""
    from .errors import NetlensError

    most = max(64, 4 * (os.cpu_count() or 1))
    given = f"{flag}{n}" if flag.endswith("=") else f"{flag} {n}"
    if n < 0:
        raise NetlensError(f"{given} is out of range: give 0 or more")
    if n > most:  # the lowest a flag takes (0 or 1) is its own: checked where it is read
        raise NetlensError(f"{given} is out of range: at most {most} on this machine")
    return n


@contextmanager
def one_thread_per_op() -> Iterator[int]:
    """Run torch operators single-threaded inside the block; yield the thread count before.

    The caller may run that many batches side by side. The setting is restored on exit.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield before
    finally:
        torch.set_num_threads(before)


def map_batches(run: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """``[run(item) for item in items]`` on up to ``workers`` threads, results in order.

    Grad mode is thread-local in torch: ``run`` sets what it needs (``torch.inference_mode``).
    """
    workers = min(workers, len(items))
    if workers <= 1:
        return [run(item) for item in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(run, items))

"""A process group as netlens uses it: this process's share of the work and a few exact exchanges.

One object serves one process and many. ``Group()`` is a single process: every share is the
whole, every exchange returns its input, nothing imports torch.distributed. ``Group.join()``
wraps a running ``torch.distributed`` job (``torchrun`` sets it up; see
:mod:`netlens.distributed.setup`).

Exchanges carry pickled Python objects over a gloo group (on GPU jobs too: the partial results
analyzers exchange are small and on the CPU) and return every rank's object **in rank order**.
Ranks hold contiguous shares (:meth:`Group.share`), so an analyzer that folds the gathered
partials in that order repeats the single-process computation operation for operation.

Failures never hang a job. A rank whose work raises records ``"rank R: cause"`` in the job's
key-value store (:meth:`Group.fail`; the first failure of a run wins); the other ranks see it at
their next exchange or progress step (:meth:`Group.check`) and stop with :class:`RankFailed`;
there, too, a worker of ``--distributed N`` whose launcher is gone stops quietly (as when the
launcher stops it: ``SystemExit(143)``, nothing written; see :mod:`.parent`).
Each run (each outermost :meth:`Group.guard`) keeps its records under keys of its own, numbered
alike on every rank (all ranks make the same runs in the same order, as their exchanges must
match), so a job that goes on after a failed run starts its next run clean. An exchange
that gets no answer within the timeout (``NETLENS_DIST_TIMEOUT`` seconds, default 600) stops with
one line naming the ranks that did not arrive.
"""

from __future__ import annotations

import os
import pickle
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import NetlensError
from .parent import launcher_gone, stopping

__all__ = [
    "EXIT_LOST",
    "DistributedError",
    "Group",
    "LostContact",
    "RankFailed",
    "describe",
    "timeout_seconds",
]

T = TypeVar("T")
# the exit status of a rank that stopped because it lost contact with the others and has no
# line to say (another rank died without a word): the launcher names the rank that died
EXIT_LOST = 75
_POLL_MAX = 0.05  # seconds between store checks while an exchange is pending
_CHECK_EVERY = 0.5  # seconds between store checks from progress steps
_LOWER_FIRST = 1.5  # seconds a failing rank > 0 leaves lower ranks to record their failure
_RUNS: dict[int, int] = {}  # runs begun in this process, by rank (one rank per process in a job)


class DistributedError(NetlensError):
    """The processes of a distributed run lost each other (a rank died, or stopped answering)."""


class RankFailed(DistributedError):
    """Another rank failed; its line (``"rank R: cause"``) is the message."""


class LostContact(DistributedError):
    """An exchange broke off: another rank died without a word (its launcher names it)."""


def timeout_seconds() -> float:
    """The exchange timeout: ``NETLENS_DIST_TIMEOUT`` seconds, default 600.

    Process groups netlens creates get a minute more, so the netlens timeout (which names the
    late ranks) is the one that fires.
    """
    text = os.environ.get("NETLENS_DIST_TIMEOUT", "").strip()
    if not text:
        return 600.0
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise NetlensError(f"NETLENS_DIST_TIMEOUT must be a positive number of seconds: {text!r}")
    return value


def describe(exc: BaseException) -> str:
    """An exception as one line: a netlens error's message, else ``Type: message``."""
    text = " ".join(str(exc).split())
    if isinstance(exc, NetlensError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


@dataclass
class Group:
    """This process's place in a run: ``rank`` of ``world`` (``Group()``: one process).

    Attributes:
        rank: this process's global rank (0 writes outputs and draws progress).
        world: the number of processes.
        local_rank: the rank on this machine (which GPU to use).
        timeout: seconds an exchange may wait for the other ranks.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    timeout: float = 600.0
    pg: Any = field(default=None, repr=False)
    store: Any = field(default=None, repr=False)
    _exchanges: int = field(default=0, repr=False)
    _checked: float = field(default=0.0, repr=False)
    _outcome: bool | None = field(default=None, repr=False)
    _run: int = field(default=0, repr=False)  # the run whose keys this Group reads and writes
    _depth: int = field(default=0, repr=False)

    @classmethod
    def join(cls, timeout: float | None = None) -> Group:
        """The running ``torch.distributed`` job as a Group (every rank must call this).

        Example:
            >>> torch.distributed.init_process_group("gloo")
            >>> lens.run("stats", "shapes", group=Group.join())  # on every rank
        """
        from datetime import timedelta

        import torch.distributed as dist
        from torch.distributed.distributed_c10d import _get_default_store

        if not dist.is_initialized():
            raise DistributedError(
                "no torch.distributed job: start under torchrun (torchrun --nproc-per-node N "
                "-m netlens ...) or call torch.distributed.init_process_group first"
            )
        secs = timeout or timeout_seconds()
        pg = None
        if dist.get_backend() != "gloo":  # exchanges stay on the CPU, through gloo
            pg = dist.new_group(backend="gloo", timeout=timedelta(seconds=secs + 60))
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return cls(dist.get_rank(), dist.get_world_size(), local, secs, pg, _get_default_store())

    @property
    def main(self) -> bool:
        """True on rank 0, the process that writes and draws."""
        return self.rank == 0

    # -- shares ----------------------------------------------------------------------------
    def part(self, n: int) -> range:
        """This rank's contiguous share of ``n`` work units (earlier ranks take the remainder).

        Example: 5 units over 2 ranks → ``range(0, 3)`` and ``range(3, 5)``.
        """
        q, r = divmod(n, self.world)
        start = self.rank * q + min(self.rank, r)
        return range(start, start + q + (self.rank < r))

    def share(self, items: Sequence[T]) -> Sequence[T]:
        """This rank's contiguous share of ``items`` (all of them in one process)."""
        if self.world == 1:
            return items
        p = self.part(len(items))
        return items[p.start : p.stop]

    # -- exchanges -------------------------------------------------------------------------
    def gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in one process)."""
        if self.world == 1:
            return [obj]
        import torch

        self._exchanges += 1
        self._store_op(lambda s: s.set(self._key(f"at/{self.rank}"), str(self._exchanges)))
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        sizes = self._all_gather(torch.tensor([len(data)], dtype=torch.long))
        longest = int(max(int(s) for s in sizes))
        buf = torch.zeros(longest, dtype=torch.uint8)
        if data:
            buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        parts = self._all_gather(buf)
        return [
            pickle.loads(p[: int(s)].numpy().tobytes()) for p, s in zip(parts, sizes, strict=True)
        ]

    def broadcast(self, make: Callable[[], T]) -> T:
        """Rank 0's ``make()`` on every rank (the others do not call ``make``)."""
        return self.gather(make() if self.main else None)[0]

    def union(self, items: dict[Any, Any]) -> dict[Any, Any]:
        """The union of every rank's dict, keys in order (e.g. skipped items by index)."""
        merged: dict[Any, Any] = {}
        for part in self.gather(items):
            merged.update(part)
        return dict(sorted(merged.items()))

    def _all_gather(self, tensor: Any) -> list[Any]:
        import torch
        import torch.distributed as dist

        outs = [torch.empty_like(tensor) for _ in range(self.world)]
        try:
            work = dist.all_gather(outs, tensor, group=self.pg, async_op=True)
            self._wait(work)
        except DistributedError:
            raise
        except RuntimeError as exc:
            raise self._lost(exc) from None
        return outs

    def _wait(self, work: Any) -> None:
        deadline = time.monotonic() + self.timeout
        pause = 0.001
        while not work.is_completed():
            self._raise_if_failed()
            if time.monotonic() > deadline:
                raise DistributedError(self._late_message())
            time.sleep(pause)
            pause = min(2 * pause, _POLL_MAX)
        work.wait()

    # -- failures --------------------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`RankFailed` if another rank has failed (rate-limited; for progress)."""
        now = time.monotonic()
        if self.world > 1 and now - self._checked >= _CHECK_EVERY:
            self._checked = now
            self._raise_if_failed()

    def fail(self, exc: BaseException) -> bool:
        """Record that this rank failed with ``exc``; True when this rank should say so.

        The first failure of a run is recorded (and said) once; a rank that stops because
        another failed (:class:`RankFailed`), or lost contact after another failed, says
        nothing. Idempotent: a second call returns the first answer.
        """
        if self.world == 1:
            return True
        if self._outcome is None:
            self._outcome = self._record(exc)
        return self._outcome

    def say(self, exc: BaseException) -> str:
        """The line for this rank's failure: ``"rank R: cause"``."""
        return f"rank {self.rank}: {describe(exc)}"

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Record a failure inside the block (:meth:`fail`) before it propagates; an error that
        follows another rank's failure (a collective torn down under it) becomes that rank's
        :class:`RankFailed`."""
        if self.world > 1 and self._depth == 0:
            self._begin_run()
        self._depth += 1
        try:
            yield
        except BaseException as exc:
            if self.world == 1:
                raise
            if not self.fail(exc) and not isinstance(exc, DistributedError):
                line = self._recorded()  # another rank failed first: that is the cause
                if line is not None:
                    raise RankFailed(line) from exc
            raise
        finally:
            self._depth -= 1

    def _begin_run(self) -> None:
        # a new run of this process (its n-th on this rank, as on every other rank): keys of its
        # own, so an earlier run's failure or exchange count is not read as this one's
        _RUNS[self.rank] = self._run = _RUNS.get(self.rank, 0) + 1
        self._outcome, self._exchanges, self._checked = None, 0, 0.0

    def _key(self, name: str) -> str:
        return f"netlens/{name}" if self._run == 0 else f"netlens/run{self._run}/{name}"

    def _record(self, exc: BaseException) -> bool:
        # SystemExit: the rank was stopped (exit_on_sigterm), not failed: it has no line, and
        # the others, losing contact, leave the launcher to name it
        if isinstance(exc, (RankFailed, SystemExit)) or stopping() is not None:
            return False
        recorded = self._recorded()
        if recorded is not None:  # this rank's own line (recorded by another Group of it) or not
            return recorded == self.say(exc)
        if isinstance(exc, LostContact):  # under torchrun, the launcher names the dead rank
            return "TORCHELASTIC_RUN_ID" not in os.environ
        line = self.say(exc)
        # an error every rank meets alike (a bad option) is said by the lowest rank: the others
        # give the lower ranks a moment to record theirs first
        deadline = time.monotonic() + (_LOWER_FIRST if self.rank else 0.0)
        while time.monotonic() < deadline:
            recorded = self._recorded()
            if recorded is not None:
                return recorded == line
            time.sleep(_POLL_MAX)
        try:
            kept = self.store.compare_set(self._key("failed"), "", line)
        except Exception:  # noqa: BLE001 - no store left: say it here
            return True
        return bytes(kept).decode("utf-8", "replace") == line

    def _recorded(self) -> str | None:
        try:
            key = self._key("failed")
            if self.store is None or not self.store.check([key]):
                return None
            return bytes(self.store.get(key)).decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - the store went away with the job
            return None

    def _raise_if_failed(self) -> None:
        stopped = stopping()  # this worker was stopped, and the SystemExit was swallowed
        if stopped is not None:
            raise SystemExit(128 + stopped)
        if launcher_gone():  # the --distributed launcher was killed: the run is over, unsaid
            raise SystemExit(128 + signal.SIGTERM)
        line = self._recorded()
        if line is not None:
            raise RankFailed(line)

    def _lost(self, exc: BaseException) -> DistributedError:
        line = self._recorded()
        if line is not None:
            return RankFailed(line)
        if "timed out" in str(exc).lower():  # the backend's own clock ran out first
            return DistributedError(self._late_message())
        return LostContact(
            f"lost contact with the other processes ({describe(exc)[:160]}); a rank died or "
            "was stopped"
        )

    def _late_message(self) -> str:
        behind = []
        for r in range(self.world):
            at = self._store_op(lambda s, r=r: _int(s, self._key(f"at/{r}")))
            if at is not None and at < self._exchanges:
                behind.append(f"rank {r} (at exchange {at})")
        who = ", ".join(behind) or "another rank"
        return (
            f"{who} did not reach exchange {self._exchanges} within "
            f"{self.timeout:g} s; it is stuck or far slower (NETLENS_DIST_TIMEOUT sets the limit)"
        )

    def _store_op(self, op: Callable[[Any], T]) -> T | None:
        if self.store is None:
            return None
        try:
            return op(self.store)
        except Exception:  # noqa: BLE001 - bookkeeping only; the exchange reports real errors
            return None


def _int(store: Any, key: str) -> int:
    return int(bytes(store.get(key))) if store.check([key]) else 0

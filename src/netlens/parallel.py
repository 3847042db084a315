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
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

from .fresh_input import write_count

__all__ = ["check_workers", "map_batches", "one_thread_per_op", "without_autograd"]

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


def map_batches(
    run: Callable[[T], R], items: Sequence[T], workers: int, model: nn.Module | None = None
) -> list[R]:
    """``[run(item) for item in items]`` on up to ``workers`` threads, results in order.

    Grad mode is thread-local in torch: ``run`` sets what it needs (:func:`without_autograd`).
    ``model``: the module ``run`` calls, when it is the user's own. A forward that keeps state
    on its modules (``self.feat = self.stem(x)``, read back later in the same forward; a buffer
    written in place) mixes batches when threads share it, so the first batch runs alone and
    is watched; a model that wrote state runs the rest one batch at a time.
    """
    workers = min(workers, len(items))
    if workers <= 1:
        return [run(item) for item in items]
    first: list[R] = []
    if model is not None and model not in _STATELESS:
        before = _state(model)
        first.append(run(items[0]))
        if _state(model) != before:  # it wrote state: the rest one at a time
            return first + [run(item) for item in items[1:]]
        _STATELESS[model] = True
    with ThreadPoolExecutor(workers) as pool:
        return first + list(pool.map(run, items[len(first) :]))


# Models seen to keep no state in their forward (only those: a model that wrote state is
# watched again next time, so a cache filled once is not held against it for ever).
_STATELESS: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def _state(model: nn.Module) -> list[tuple[Any, ...]]:
    """What a forward that keeps state changes: each module's attributes (by identity) and
    its parameters' and buffers' in-place versions."""
    seen: list[tuple[Any, ...]] = []
    for m in model.modules():
        seen.append(tuple((k, id(v)) for k, v in vars(m).items()))
        for group in (m._parameters, m._buffers):
            seen.append(tuple((k, id(t), write_count(t)) for k, t in group.items()))
    return seen


def without_autograd(model: nn.Module | None, run: Callable[[], R]) -> R:
    """``run()`` under ``torch.inference_mode()``, or ``torch.no_grad()`` for a model whose
    forward hands work to threads of its own (``pool.submit(self.branch, f)``).

    Inference mode is thread-local: the model's threads run with grad mode on, on inference
    tensors, and torch refuses ("Inference tensors cannot be saved for backward"). Such a model
    is rerun under ``no_grad`` (a mode its threads do not see either, but which makes ordinary
    tensors) and remembered, so its later passes go there at once.
    """
    if model is None or model not in _THREADED:
        try:
            with torch.inference_mode():
                return run()
        except RuntimeError as exc:
            if model is None or "nference tensor" not in str(exc):
                raise
            if torch.is_inference_mode_enabled():  # an outer block's: it reruns
                _THREADED[model] = True
                raise
        _THREADED[model] = True
    with torch.no_grad():
        return run()


# Models whose forward was seen to run on threads of its own (see without_autograd).
_THREADED: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()

"""Batches on threads and a user's model that keeps state in its forward: the threads must not
share it (they read each other's ``self.feat``)."""

from __future__ import annotations

import threading
import time

import torch
from torch import nn

from netlens.parallel import _STATELESS, map_batches


class Keeps(nn.Module):
    """Stores its input on ``self`` and reads it back after a pause (another thread's write
    lands in between when two share it)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.feat = self.lin(x)
        time.sleep(0.02)
        return self.feat * 1.0


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def _run(model: nn.Module, xs: list[torch.Tensor], threads: set[int]):
    def run(i: int) -> torch.Tensor:
        threads.add(threading.get_ident())
        with torch.no_grad():
            return model(xs[i])

    return run


def test_a_model_that_keeps_state_runs_its_batches_one_at_a_time() -> None:
    torch.manual_seed(0)
    model, xs = Keeps(), [torch.randn(2, 4) for _ in range(8)]
    with torch.no_grad():
        want = [model.lin(x) for x in xs]
    threads: set[int] = set()
    got = map_batches(_run(model, xs, threads), range(8), 4, model=model)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert len(threads) == 1 and model not in _STATELESS


def test_a_stateless_model_runs_on_threads_and_is_remembered() -> None:
    torch.manual_seed(0)
    model, xs = Plain(), [torch.randn(2, 4) for _ in range(8)]
    with torch.no_grad():
        want = [model(x) for x in xs]
    got = map_batches(_run(model, xs, set()), range(8), 4, model=model)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert _STATELESS.get(model) is True


def test_a_buffer_written_in_place_counts_as_state() -> None:
    class Counts(Plain):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return super().forward(x)

    model, xs = Counts(), [torch.randn(2, 4) for _ in range(4)]
    threads: set[int] = set()
    map_batches(_run(model, xs, threads), range(4), 4, model=model)
    assert len(threads) == 1 and int(model.calls) == 4

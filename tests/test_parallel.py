"""netlens.parallel: batches on threads, torch single-threaded inside, the setting restored."""

from __future__ import annotations

import pytest
import torch

from netlens.parallel import map_batches, one_thread_per_op


def test_map_batches_keeps_the_order_on_any_number_of_threads() -> None:
    for workers in (1, 2, 5):
        assert map_batches(lambda i: i * i, range(7), workers) == [i * i for i in range(7)]
    assert map_batches(lambda i: i, [], 2) == []


def test_one_thread_per_op_restores_the_thread_count_also_on_error() -> None:
    before = torch.get_num_threads()
    with one_thread_per_op() as workers:
        assert workers == before and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), one_thread_per_op():
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before

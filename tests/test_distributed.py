"""Scale-out pieces in one process: shares, exact merges, rank sinks, launcher helpers.

The runs over real processes are in test_distributed_runs.py (analyzers),
test_distributed_cli.py (the CLI, failures) and test_distributed_train.py (DDP).
"""

from __future__ import annotations

import signal

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from netlens.analyzers.inputs import Data
from netlens.analyzers.stats import LayerStats, histogram_edges
from netlens.analyzers.top_activations import _combine, merge_top
from netlens.distributed import Group
from netlens.distributed.group import describe
from netlens.distributed.launch import _exit_status, strip_flag
from netlens.distributed.sinks import RankProgress
from netlens.errors import AnalyzerError, DataError
from netlens.lens import Lens
from netlens.testing import make_tiny_model
from netlens.train.augment import augment_batch
from netlens.train.ddp import RankBatches, global_size


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_parts_cover_every_unit_once_in_order(world: int) -> None:
    for n in range(0, 13):
        parts = [Group(rank=r, world=world).part(n) for r in range(world)]
        assert [i for p in parts for i in p] == list(range(n))
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def _indices(data: Data, batch_size: int) -> list[list[int]]:
    return [idx.tolist() for _, _, idx in data.loader(batch_size, with_index=True)]


@pytest.mark.parametrize("world", [2, 3, 7])
def test_loader_shares_are_the_single_process_batches(world: int) -> None:
    x, y = torch.randn(23, 3, 4, 4), torch.arange(23)
    whole = _indices(Data(TensorDataset(x, y), "t"), 4)
    assert [len(b) for b in whole] == [4, 4, 4, 4, 4, 3]
    shares = [
        _indices(Data(TensorDataset(x, y), "t", group=Group(r, world)), 4) for r in range(world)
    ]
    firsts = [
        Data(TensorDataset(x, y), "t", group=Group(r, world)).loader(4).first for r in range(world)
    ]
    assert firsts == [sum(len(s) for s in shares[:r]) for r in range(world)]  # batch numbers
    assert [b for s in shares for b in s] == whole  # no item twice, none lost, same batches
    assert sum(1 for s in shares if not s) == max(0, world - len(whole))  # idle ranks


def test_a_user_dataloader_is_shared_by_its_own_batches() -> None:
    ds = TensorDataset(torch.randn(10, 3, 4, 4), torch.arange(10))
    loader = DataLoader(ds, batch_size=3)  # 3+3+3+1
    got = [_indices(Data(ds, "t", loader_given=loader, group=Group(r, 2)), 99) for r in (0, 1)]
    assert got == [[[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9]]]
    shuffling = DataLoader(ds, batch_size=3, shuffle=True)
    with pytest.raises(DataError, match="shuffle=False"):
        Data(ds, "t", loader_given=shuffling, group=Group(0, 2)).loader(3)


def test_merged_layer_stats_equal_one_stream_bit_for_bit() -> None:
    g = torch.Generator().manual_seed(0)
    batches = [torch.relu(torch.randn(5, 4, 3, 3, generator=g) * 3 + i) for i in range(7)]
    one = LayerStats(eps=0.1, bins=16)
    for b in batches:
        one.update(b)
    edges = histogram_edges(batches[0].numpy().ravel(), 16, None)
    parts = [LayerStats(eps=0.1, bins=16, edges=edges) for _ in range(3)]
    for part, share in zip(parts, (batches[:3], batches[3:5], batches[5:]), strict=True):
        for b in share:
            part.update(b)
    merged = parts[0]
    for later in parts[1:]:
        merged.merge(later)
    for key in ("count", "mean", "m2", "low", "high", "near_zero", "underflow", "overflow"):
        assert getattr(merged, key) == getattr(one, key), key
    np.testing.assert_array_equal(merged.hist, one.hist)
    np.testing.assert_array_equal(merged.edges, one.edges)
    assert torch.equal(merged.unit_max, one.unit_max)
    assert merged.row("x") == one.row("x")
    assert one.m2 > 0 and one.overflow > 0  # the streams carry real spread and out-of-range values


def test_merge_refuses_other_histogram_edges() -> None:
    a, b = LayerStats(bins=4), LayerStats(bins=4)
    a.update(torch.rand(2, 3))
    b.update(torch.rand(2, 3) + 5)
    with pytest.raises(AnalyzerError, match="edges"):
        a.merge(b)


def test_top_k_merged_from_shares_equals_one_stream_with_ties() -> None:
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 4, (3, 20), generator=g).float()  # many ties
    ids = torch.arange(20).expand(3, -1)
    empty = torch.zeros((3, 0)), torch.zeros((3, 0), dtype=torch.long)
    one = empty
    for s in range(0, 20, 3):
        one = merge_top(*one, scores[:, s : s + 3], ids[:, s : s + 3], 5)
    parts = []
    for lo, hi in ((0, 9), (9, 15), (15, 20)):
        best = empty
        for s in range(lo, hi, 3):
            e = min(s + 3, hi)
            best = merge_top(*best, scores[:, s:e], ids[:, s:e], 5)
        parts.append((*best, [], hi - lo, (1, 1)))
    parts.insert(1, (None, None, [], 0, None))  # a rank that had no data
    best, best_ids, _, seen, _ = _combine(parts, 5)
    assert torch.equal(best, one[0]) and torch.equal(best_ids, one[1]) and seen == 20


def test_rank_progress_draws_on_rank_0_only_and_stops_at_the_total() -> None:
    seen: list[int] = []

    class Sink:
        def note(self, text: str) -> None:
            seen.append(-1)

        def task(self, label, total=None, unit="images"):  # noqa: ANN001, ANN201
            from contextlib import nullcontext

            return nullcontext(seen.append)

    for rank in (0, 1):
        p = RankProgress(Sink(), Group(rank, 2))
        p.note("hello")
        with p.task("x", total=7) as advance:
            for n in (2, 2):
                advance(n)
    assert seen == [-1, 4, 3]  # rank 0 counts its steps twice (two ranks), capped at 7


def test_a_non_combining_analyzer_refuses_several_processes() -> None:
    lens = Lens(make_tiny_model())
    with pytest.raises(AnalyzerError, match="does not combine results across processes"):
        lens.run("kernels", group=Group(0, 2))


def test_describe_and_launcher_helpers() -> None:
    assert describe(DataError("bad  item\n here")) == "bad item here"
    assert describe(ValueError("x")) == "ValueError: x"
    argv = ["stats", "m.pt", "--distributed", "2", "--out", "o", "--distributed=3"]
    assert strip_flag(argv) == ["stats", "m.pt", "--out", "o"]

    class Failure:
        def __init__(self, code: int) -> None:
            self.exitcode = code

    assert _exit_status({1: Failure(1), 0: Failure(-signal.SIGTERM)}) == 1  # rank 1 said why
    assert _exit_status({0: Failure(3), 1: Failure(3)}) == 3  # skipped items reported


def test_launcher_names_a_rank_killed_by_a_signal(capsys: pytest.CaptureFixture[str]) -> None:
    class Failure:
        def __init__(self, code: int) -> None:
            self.exitcode = code

    assert _exit_status({0: Failure(-signal.SIGTERM), 1: Failure(-signal.SIGKILL)}) == 1
    assert capsys.readouterr().err.strip() == (
        "error: rank 1 died (SIGKILL) and the run was stopped; nothing was written (out of memory?)"
    )


def test_rank_batches_split_each_global_batch_and_skip_an_unsplittable_tail() -> None:
    from torch.utils.data import BatchSampler, SequentialSampler

    for n, size, world in ((23, 8, 2), (25, 8, 3), (17, 8, 2)):
        batches = BatchSampler(SequentialSampler(range(n)), size, drop_last=False)
        whole = [b for b in batches if len(b) >= world]
        shares = [list(RankBatches(batches, Group(r, world))) for r in range(world)]
        assert all(
            len(s) == len(RankBatches(batches, Group(r, world))) for r, s in enumerate(shares)
        )
        for step, batch in enumerate(whole):
            assert [i for s in shares for i in s[step]] == batch
            assert global_size(step, n, size) == len(batch)
    assert len(RankBatches(BatchSampler(SequentialSampler(range(25)), 8, False), Group(0, 3))) == 3


def test_augmenting_a_part_gives_its_rows_of_the_whole_batch() -> None:
    x = torch.randn(7, 3, 6, 6)
    whole = augment_batch(x, flip=True, crop=2, generator=torch.Generator().manual_seed(3))
    parts = [
        augment_batch(
            x[p.start : p.stop],
            flip=True,
            crop=2,
            generator=torch.Generator().manual_seed(3),
            rows=(p.start, 7),
        )
        for p in (Group(r, 2).part(7) for r in range(2))
    ]
    assert torch.equal(torch.cat(parts), whole)
    assert not torch.equal(whole, x)  # something was flipped or shifted

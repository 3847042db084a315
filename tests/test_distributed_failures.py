"""Failures of distributed runs and training that must be said, and resumes that must be exact.

- ``train --distributed 2`` says a rank's failure in one line (the CLI and the trainer share one
  Group of each process), and the launcher leaves nothing in the temp folder;
- a rank stopped by SIGTERM is named by the launcher, as one killed by SIGKILL;
- a resumed run shuffles as the uninterrupted one, with DataLoader workers;
- an empty validation split scores nothing (not accuracy 0) and the last epoch is kept.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import netlens
from netlens.errors import DataError

SMALL = {"arch": "allconv", "arch_kwargs": {"widths": [8, 16], "depths": [1, 1]}, "img_size": 32}


class _Store:
    """The part of a torch.distributed store that Group uses."""

    def __init__(self) -> None:
        self.kv: dict[str, bytes] = {}

    def compare_set(self, key: str, expected: str, value: str) -> bytes:
        if key not in self.kv:
            self.kv[key] = value.encode()
        return self.kv[key]

    def check(self, keys: list[str]) -> bool:
        return all(k in self.kv for k in keys)

    def get(self, key: str) -> bytes:
        return self.kv[key]


def test_a_second_group_of_the_failing_rank_says_its_own_failure() -> None:
    from netlens.distributed import Group

    store = _Store()
    exc = DataError("a.png: cannot decode")
    first, second = Group(0, 2, store=store), Group(0, 2, store=store)  # one process, twice
    assert first.fail(exc) and second.fail(exc)  # its own line: said (once, by the caller)
    other = Group(1, 2, store=store)
    assert not other.fail(DataError("b.png: cannot decode"))  # another rank was first
    assert not Group(1, 2, store=store).fail(SystemExit(143))  # stopped, not failed


def test_an_error_every_rank_meets_is_said_by_the_lowest() -> None:
    import threading
    import time

    from netlens.distributed import Group

    store, said = _Store(), {}
    exc = DataError("the selector matched 2 layers")
    late = threading.Thread(target=lambda: said.update(r1=Group(1, 2, store=store).fail(exc)))
    late.start()  # rank 1 fails first...
    time.sleep(0.3)
    said["r0"] = Group(0, 2, store=store).fail(exc)  # ...rank 0 a moment later
    late.join()
    assert said == {"r0": True, "r1": False}
    assert store.kv["netlens/failed"].decode().startswith("rank 0: ")


def test_the_launcher_names_the_rank_a_signal_stopped() -> None:
    from netlens.distributed import EXIT_LOST
    from netlens.distributed.launch import _exit_status

    def failures(**codes: int) -> dict[int, object]:  # in the order the launcher found them
        return {int(k[1:]): SimpleNamespace(exitcode=c) for k, c in codes.items()}

    cases = [
        (failures(r0=EXIT_LOST, r1=143), "rank 1 died (SIGTERM)"),  # unwound on SIGTERM
        (failures(r1=143, r0=-15), "rank 1 died (SIGTERM)"),  # rank 0: stopped by the launcher
        (failures(r1=-9, r0=-15), "rank 1 died (SIGKILL)"),
        (failures(r0=EXIT_LOST, r1=EXIT_LOST), "lost contact"),
    ]
    for given, said in cases:
        err = []
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "stderr", SimpleNamespace(write=err.append, flush=lambda: None))
            assert _exit_status(given) == 1
        assert said in "".join(err), (given, err)
    assert _exit_status(failures(r0=EXIT_LOST, r1=1)) == 1  # rank 1 said why


def _shapes(tmp_path: Path, n: int) -> Path:
    from netlens.data.shapes import write_folder

    root, _ = write_folder(tmp_path / "shapes", n=n, size=32, seed=3)
    return root


def test_train_on_two_processes_says_a_strict_failure(tmp_path: Path) -> None:
    root = _shapes(tmp_path, 13)  # 12 training images: 3 whole batches, every image met
    bad = sorted(root.rglob("*.png"))[0]
    bad.write_bytes(b"not a png")
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NETLENS_THREADS": "1", "TMPDIR": str(temp)}
    done = subprocess.run(
        [
            *(sys.executable, "-m", "netlens", "train", "--arch", "allconv", "--data", str(root)),
            *("--arch-opt", "widths=[8,16]", "--arch-opt", "depths=[1,1]", "--img-size", "32"),
            *("--epochs", "1", "--batch-size", "4", "--workers", "0", "--strict", "--quiet"),
            *("--out", str(tmp_path / "out"), "--distributed", "2"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 1
    said = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(said) == 1 and said[0].startswith("error: rank "), done.stderr
    assert bad.name in said[0] and "--strict" in said[0]
    left = [p.name for p in temp.iterdir() if "inductor" not in p.name]  # torch's own cache
    assert left == []  # the launcher's log folder is gone


def test_a_resumed_run_with_workers_continues_the_run(tmp_path: Path, monkeypatch) -> None:
    import netlens.train.trainer as trainer_mod
    from netlens.train import TrainConfig, run

    root = _shapes(tmp_path, 20)
    cfg = TrainConfig(
        **SMALL, data=str(root), epochs=3, batch_size=4, workers=1, out=str(tmp_path / "r.pt")
    )
    real_epoch = trainer_mod._train_epoch

    def crash_in_epoch_2(ctx, epoch, progress):  # noqa: ANN001, ANN202
        if epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(ctx, epoch, progress)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        monkeypatch.setattr(trainer_mod, "_train_epoch", crash_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            run(cfg, quiet=True)
        monkeypatch.setattr(trainer_mod, "_train_epoch", real_epoch)
        resumed = run(TrainConfig(**{**cfg.to_dict(), "resume": True}), quiet=True)
        straight = run(TrainConfig(**{**cfg.to_dict(), "out": str(tmp_path / "s.pt")}), quiet=True)
    finally:
        torch.set_num_threads(threads)
    losses = [[r["train_loss"] for r in x.record["history"]] for x in (straight, resumed)]
    assert losses[0] == losses[1]


def test_an_empty_validation_split_scores_nothing(tmp_path: Path) -> None:
    from netlens.data.items import item_name
    from netlens.plugins.manager import PluginHost
    from netlens.train.datasets import resolve_splits

    root = _shapes(tmp_path, 12)  # a 10% holdout of 12 images: 1 image
    val = resolve_splits(str(root), PluginHost(), seed=1).val
    Path(item_name(val, 0)).write_bytes(b"not a png")
    result = netlens.train(
        **SMALL, data=str(root), epochs=2, batch_size=4, workers=0, seed=1, quiet=True,
        out=str(tmp_path / "m.pt"),
    )  # fmt: skip
    rec = result.record
    assert rec["val"]["n"] == 0 and rec["val"]["accuracy"] is None and rec["val"]["f1"] is None
    assert rec["best_epoch"] == 2  # the last epoch, not the first "best" at 0%
    assert all(r["val_accuracy"] is None for r in rec["history"])
    assert len(rec["skipped"]) == 1


def test_a_batchnorm_model_needs_two_images_per_process() -> None:
    from netlens.distributed import Group
    from netlens.errors import NetlensError
    from netlens.train.datasets import make_loader
    from netlens.train.ddp import rank_loader

    data = torch.utils.data.TensorDataset(torch.zeros(10, 1), torch.zeros(10, dtype=torch.long))
    rank1 = Group(1, 2)
    with pytest.raises(NetlensError, match="BatchNorm"):  # 2/1: one image on rank 1
        rank_loader(make_loader(data, 3, shuffle=True, workers=0, pin=False), rank1, True)
    assert len(rank_loader(make_loader(data, 3, shuffle=True, workers=0, pin=False), rank1)) == 3
    loader = rank_loader(make_loader(data, 4, shuffle=True, workers=0, pin=False), rank1, True)
    assert [len(b[1]) for b in loader] == [2, 2] and len(loader) == 2  # the 1/1 tail left out


def test_an_empty_test_split_scores_nothing(tmp_path: Path) -> None:
    """A test split whose every image is unreadable reported accuracy 0.0 for n = 0."""
    import shutil

    from netlens.report import build_report

    data = tmp_path / "split"
    data.mkdir()
    shutil.move(str(_shapes(tmp_path, 12)), data / "train")
    name = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())[0]
    (data / "test" / name).mkdir(parents=True)
    (data / "test" / name / "bad.png").write_bytes(b"not a png")
    result = netlens.train(
        **SMALL, data=str(data), epochs=1, batch_size=4, workers=0, seed=1, quiet=True,
        out=str(tmp_path / "m.pt"),
    )  # fmt: skip
    assert result.test["n"] == 0 and result.test["accuracy"] is None
    assert result.test["f1"] is None
    page = build_report(netlens.load(result.path), sections="card")  # the card reads the record
    assert "test accuracy" not in page.html


def test_a_job_goes_on_clean_after_a_failed_run(monkeypatch) -> None:
    """A torchrun script that catches a failed run and starts another: the second run's ranks
    must not read the first run's failure (nor its exchange counts) from the job's store."""
    import threading

    from netlens.distributed import Group, RankFailed
    from netlens.distributed import group as group_module

    monkeypatch.setattr(group_module, "_RUNS", {}, raising=False)
    store = _Store()
    ranks = [Group(0, 2, store=store), Group(1, 2, store=store)]
    seen: dict[tuple[int, int], str] = {}

    def runs(g: Group) -> None:
        try:
            with g.guard():  # run 1: every rank meets the same bad option
                raise DataError("the selector matched 2 layers")
        except (DataError, RankFailed) as exc:  # rank 1: rank 0's line (the lower one says it)
            seen[g.rank, 1] = f"{type(exc).__name__}: {exc}"
        try:
            with g.guard():  # run 2: fine on every rank
                g._checked = 0.0
                g.check()
            seen[g.rank, 2] = "ok"
        except RankFailed as exc:
            seen[g.rank, 2] = f"RankFailed: {exc}"

    threads = [threading.Thread(target=runs, args=(g,)) for g in ranks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen[1, 1] == "RankFailed: rank 0: the selector matched 2 layers", seen
    assert seen[0, 2] == seen[1, 2] == "ok", seen
    assert store.kv["netlens/run1/failed"].decode().startswith("rank 0: ")
    assert ranks[0].fail(DataError("x")) and not ranks[1].fail(DataError("x"))  # run 2's own

"""Every dataset-level analyzer on 2 processes (torchrun, gloo) equals one process, bit for bit.

One torchrun job (tests/dist_worker.py) runs all the analyses of tests/dist_jobs.py through the
Python API with ``group=``; this process computes the same analyses alone (one thread, like the
workers) and every array, table row and meta value must be equal — counts, top-k, per-image
scores, means and variances, ablation rows with their bootstrap intervals included. The one
exception, stated in docs/scaling-out.md: ablation's ``mean`` mode adds the ranks' float64 unit
sums, so its rows equal one process's to float64 reassociation. An ablation interrupted on one
process resumes on two, and the other way round.
"""

from __future__ import annotations

import csv
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from dist_jobs import JOBS, essence, make_fixture, run_job

import netlens

HERE = Path(__file__).parent


def torchrun(*args: str, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N ARGS`` in a subprocess (output captured)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={nproc}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


EXACT = [job for job in JOBS if job != "ablate-mean"]


def interrupt(rows: Path, keep: int) -> int:
    """Cut an ablation row file to its first ``keep`` rows, as if the run stopped there."""
    with rows.open(newline="") as fh:
        lines = list(csv.reader(fh))
    with rows.open("w", newline="") as fh:
        csv.writer(fh).writerows(lines[: keep + 1])
    return len(lines) - 1


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dist")
    model, data = make_fixture(folder)
    with one_thread():  # an ablation interrupted on one process, to resume on two
        run_job(netlens.load(model, device="cpu"), "keep:ablate-blocks", data, progress=False)
    shutil.move(folder / "kept", folder / "resume")
    assert interrupt(folder / "resume" / "ablation.csv", 3) > 5
    jobs = [*JOBS, "resume:ablate-blocks", "keep:ablate-channels"]
    done = torchrun(str(HERE / "dist_worker.py"), str(folder), *jobs)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


class one_thread:
    """torch on one thread inside the block (the workers' setting)."""

    def __enter__(self) -> None:
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.threads)


@pytest.fixture(scope="module")
def alone(shared: Path) -> Any:
    """The single-process result of a job (computed once per job, on one thread)."""
    lens = netlens.load(shared / "r18.pt", device="cpu")
    cache: dict[str, Any] = {}

    def get(job: str, **kwargs: Any) -> Any:
        if kwargs:
            with one_thread():
                return essence(run_job(lens, job, shared / "shapes", progress=False, **kwargs))
        if job not in cache:
            with one_thread():
                cache[job] = essence(run_job(lens, job, shared / "shapes", progress=False))
        return cache[job]

    return get


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Equal bit for bit: arrays, tensors, floats (NaN equals NaN), nested containers."""
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, (np.ndarray, torch.Tensor, np.generic)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), where
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, float) and np.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _ranks(shared: Path, job: str) -> list[Any]:
    return [pickle.loads((shared / f"{job}.rank{r}.pkl").read_bytes()) for r in (0, 1)]


@pytest.mark.parametrize("job", EXACT)
def test_two_processes_equal_one(job: str, shared: Path, alone: Any) -> None:
    ref = alone(job)
    for got in _ranks(shared, job):  # every rank returns the combined result
        assert_same(ref, got, job)


def test_mean_mode_ablation_equals_one_process_to_float64_reassociation(shared, alone) -> None:
    ref = alone("ablate-mean")
    for got in _ranks(shared, "ablate-mean"):
        assert [r["key"] for r in got["table"]] == [r["key"] for r in ref["table"]]
        for a, b in zip(ref["table"], got["table"], strict=True):
            for col in ("value", "ci_low", "ci_high", "delta"):
                assert b[col] == pytest.approx(a[col], rel=1e-9, abs=1e-12), (a["key"], col)


def test_an_interrupted_ablation_resumes_on_another_number_of_processes(shared, alone) -> None:
    whole = alone("ablate-blocks")
    for got in _ranks(shared, "resume-ablate-blocks"):  # stopped on one process, done on two
        assert_same(whole, got)
    rows = list(csv.reader((shared / "resume" / "ablation.csv").open(newline="")))
    assert len(rows) - 1 == len(whole["table"])  # rank 0 appended the missing rows, once
    # ...and rows made on two processes, interrupted, resume on one
    shutil.copytree(shared / "kept", shared / "kept-cut")
    interrupt(shared / "kept-cut" / "ablation.csv", 4)
    resumed = alone("ablate-channels", out=shared / "kept-cut", resume=True)
    assert_same(alone("ablate-channels"), resumed)


def test_the_comparison_sees_the_numbers(alone: Any) -> None:
    """The results compared above are not empty or constant: a difference would show."""
    stats, top, ev = alone("stats"), alone("top"), alone("evaluate")
    assert len(stats["table"]) > 10 and stats["table"][0]["values"] > 0
    assert 0 < stats["table"][0]["std"] and stats["meta"]["samples"] == 23
    assert top["arrays"]["scores"].shape[1] == 3 and len(np.unique(top["arrays"]["indices"])) > 3
    scores = ev["arrays"]["gradcam/deletion/score"]
    assert scores.shape == (23,) and np.unique(scores).size > 10
    assert alone("cam")["arrays"]["heatmaps"].shape[0] == 23
    assert alone("sanity")["arrays"]["gradcam/spearman"].shape[1] == 23
    blocks = alone("ablate-blocks")["table"]
    assert len(blocks) == 9 and len({r["value"] for r in blocks}) == 9  # baseline + 8 blocks
    noise = alone("ablate-noise")["table"]
    assert all(r["value"] > 0 for r in noise[1:])  # noise moved the outputs (KL > 0)
    channels = alone("ablate-channels")["table"]
    assert {r["kind"] for r in channels} >= {"channel", "curve-importance", "curve-random"}
    with pytest.raises(AssertionError):
        assert_same(stats, alone("stats-range"))

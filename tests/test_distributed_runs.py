"""Every dataset-level analyzer on 2 processes (torchrun, gloo) equals one process, bit for bit.

One torchrun job (tests/dist_worker.py) runs all the analyses of tests/dist_jobs.py through the
Python API with ``group=``; this process computes the same analyses alone (one thread, like the
workers) and every array, table row and meta value must be equal — counts, top-k, per-image
scores, means and variances included.
"""

from __future__ import annotations

import os
import pickle
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


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dist")
    make_fixture(folder)
    done = torchrun(str(HERE / "dist_worker.py"), str(folder), *JOBS)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def alone(shared: Path) -> Any:
    """The single-process result of a job (computed once per job, on one thread)."""
    lens = netlens.load(shared / "r18.pt", device="cpu")
    cache: dict[str, Any] = {}

    def get(job: str) -> Any:
        if job not in cache:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                cache[job] = essence(run_job(lens, job, shared / "shapes", progress=False))
            finally:
                torch.set_num_threads(threads)
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


@pytest.mark.parametrize("job", list(JOBS))
def test_two_processes_equal_one(job: str, shared: Path, alone: Any) -> None:
    ref = alone(job)
    for got in _ranks(shared, job):  # every rank returns the combined result
        assert_same(ref, got, job)


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
    with pytest.raises(AssertionError):
        assert_same(stats, alone("stats-range"))

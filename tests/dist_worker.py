"""One rank of the distributed tests: ``torchrun --nproc-per-node 2 dist_worker.py DIR JOB...``.

Loads ``DIR/r18.pt``, runs each job on ``DIR/shapes`` sharded over the job's ranks, and pickles
what it got to ``DIR/JOB.rankR.pkl`` (the test compares them with one process).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from dist_jobs import dump, essence, run_job

import netlens
from netlens.distributed.setup import join_from_env


def main(folder: Path, jobs: list[str]) -> None:
    torch.set_num_threads(1)
    group, device = join_from_env("cpu")
    lens = netlens.load(folder / "r18.pt", device=device)
    for job in jobs:
        result = run_job(lens, job, folder / "shapes", group=group, progress=False)
        dump(essence(result), folder / f"{job.replace(':', '-')}.rank{group.rank}.pkl")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])

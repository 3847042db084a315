"""``netlens train --distributed 2``: DDP follows the single-process run on the same global batches.

LeNet-5 has no BatchNorm or dropout, so two processes, each taking half of every global batch
(same shuffle, same flips and shifts, loss weighted by share), must end where one process ends,
up to the reassociation of the gradient sums.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

import netlens

ARGS = {"epochs": 2, "max_batches": 5, "batch_size": 30, "lr": 0.01, "flip": True, "crop": 2}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max() / a[k].abs().max()) for k in a)


def test_two_processes_follow_one_process(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = netlens.train(
            "lenet5", "mnist5k", out=str(tmp_path / "one.pt"), workers=0, quiet=True, **ARGS
        )
        other_seed = netlens.train(
            "lenet5",
            "mnist5k",
            out=str(tmp_path / "seed1.pt"),
            workers=0,
            quiet=True,
            seed=1,
            **ARGS,
        )
    finally:
        torch.set_num_threads(threads)
    cli = [
        f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')}={v}"
        for k, v in ARGS.items()
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NETLENS_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "netlens",
            "train",
            "--arch",
            "lenet5",
            "--data",
            "mnist5k",
            "--workers",
            "0",
            "--quiet",
            "--out",
            str(tmp_path / "two"),
            *cli,
            "--distributed",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    written = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert written == [".netlens.lock", "model.pt"]  # rank 0 wrote, under the folder's lock
    two = torch.load(tmp_path / "two" / "model.pt", map_location="cpu", weights_only=True)
    a, b = _weights(one.path), two["state_dict"]
    assert _rel(a, b) < 1e-4  # the same training, up to float reassociation
    assert _rel(a, _weights(other_seed.path)) > 0.1  # ...while another seed ends elsewhere
    rec = two["record"]
    assert rec["processes"] == 2 and one.record["processes"] == 1
    assert [r["images"] for r in rec["history"]] == [r["images"] for r in one.record["history"]]
    assert rec["val"]["n"] == one.record["val"]["n"]
    assert abs(rec["val"]["loss"] - one.record["val"]["loss"]) < 1e-4 * one.record["val"]["loss"]

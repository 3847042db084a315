"""Data that does not split evenly or simply over the processes of a distributed run.

A process whose share of the batches is all unreadable, or that gets no batch at all, skips its
part and the run goes on (the skipped items reported as in one process); only when no process
could read anything is the data refused. A DataLoader over a stream cannot be split between
processes and is refused in one line; a stream without a length is one line in any run.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

import netlens
from netlens.errors import DataError

NET = """
from torch import nn

class Net(nn.Module):
    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.block(self.act(self.conv(x))).mean(dim=(2, 3)))
"""

STREAM_WORKER = """
import sys
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset
import netlens
from netlens.distributed import Group
from netlens.errors import NetlensError

dist.init_process_group("gloo")
group = Group.join()
lens = netlens.load(sys.argv[1], arch=sys.argv[2], input_size=32, device="cpu")
ds = lens.dataset(sys.argv[3])

class Stream(IterableDataset):
    def __len__(self):
        return len(ds)

    def __iter__(self):
        return (ds[i] for i in range(len(ds)))

try:
    lens.run("stats", DataLoader(Stream(), batch_size=2), group=group)
    print(f"rank {group.rank}: ran")
except NetlensError as exc:  # one rank's DataError; the other sees it as RankFailed
    print(f"rank {group.rank}: refused: {exc}")
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from netlens.data.shapes import write_folder

    folder = tmp_path_factory.mktemp("dist-foreign")
    (folder / "tinynet.py").write_text(textwrap.dedent(NET))
    sys.path.insert(0, str(folder))
    try:
        import tinynet

        torch.manual_seed(0)
        torch.save(tinynet.Net().state_dict(), folder / "tiny.pt")
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("tinynet", None)
    data, _ = write_folder(folder / "shapes", n=5, size=32, seed=3)
    tail = folder / "tail"  # 5 images, then 4 unreadable: in batches of 2, all of rank 1's
    for png in data.rglob("*.png"):
        dest = tail / png.relative_to(data)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(png.read_bytes())
    last = sorted(p for p in tail.iterdir() if p.is_dir())[-1]
    for i in range(4):
        (last / f"zz{i}.png").write_bytes(b"not a png")
    junk = folder / "junk"  # nothing readable anywhere
    (junk / "a").mkdir(parents=True)
    for i in range(4):
        (junk / "a" / f"{i}.png").write_bytes(b"not a png")
    return {"folder": folder, "data": data, "tail": tail, "junk": junk}


def netlens_cli(
    files: dict[str, Path], *args: str, out: Path, dist: bool
) -> subprocess.CompletedProcess:
    """``python -m netlens ARGS`` on the tiny model (``dist``: on two processes)."""
    folder = files["folder"]
    model = [str(folder / "tiny.pt"), "--arch", f"{folder / 'tinynet.py'}:Net", "--size", "32"]
    extra = ["--distributed", "2"] if dist else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NETLENS_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "netlens", args[0], *model, *args[1:], "-q", "-o", str(out), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_process_that_reads_nothing_skips_its_share_as_one_process_does(files, tmp_path) -> None:
    args = ["top", "--data", str(files["tail"]), "--layer", "block", "--batch-size", "2"]
    one = netlens_cli(files, *args, out=tmp_path / "one", dist=False)
    two = netlens_cli(files, *args, out=tmp_path / "two", dist=True)
    assert one.returncode == two.returncode == 3, two.stderr[-2000:]
    a = json.loads((tmp_path / "one" / "top-activations.json").read_text())
    b = json.loads((tmp_path / "two" / "top-activations.json").read_text())
    assert a["table"] == b["table"] and a["samples"] == b["samples"] == 5
    assert b["run"]["data"]["skipped"] == 4


@pytest.mark.parametrize("data", ["tail", "few"])
def test_ablate_with_a_process_without_a_batch_equals_one_process(files, tmp_path, data) -> None:
    # tail: rank 1's batches are all unreadable; few: 5 images, one batch of 64, 2 processes
    args = ["ablate", "--metric", "agreement", "--resamples", "20"]
    args += ["--data", str(files[data if data == "tail" else "data"])]
    args += ["--batch-size", "2"] if data == "tail" else ["-n", "5"]
    one = netlens_cli(files, *args, out=tmp_path / "one", dist=False)
    two = netlens_cli(files, *args, out=tmp_path / "two", dist=True)
    assert two.returncode == one.returncode == (3 if data == "tail" else 0), two.stderr[-2000:]
    assert rows(tmp_path / "two" / "ablation.csv") == rows(tmp_path / "one" / "ablation.csv")


def test_no_readable_image_on_any_process_is_one_line(files, tmp_path) -> None:
    args = ["top", "--data", str(files["junk"]), "--layer", "block", "--batch-size", "2"]
    done = netlens_cli(files, *args, out=tmp_path / "out", dist=True)
    assert done.returncode == 1
    said = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(said) == 1 and "none of the 4 images could be read" in said[0], said
    assert not (tmp_path / "out").exists()


def test_a_stream_loader_is_refused_on_several_processes(files, tmp_path) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(STREAM_WORKER)
    folder = files["folder"]
    args = [str(folder / "tiny.pt"), f"{folder / 'tinynet.py'}:Net", str(files["data"])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NETLENS_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    done = subprocess.run(
        [*cmd, str(worker), *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    said = sorted(line for line in done.stdout.splitlines() if line.startswith("rank "))
    assert len(said) == 2 and all("refused" in line for line in said), said
    assert all("cannot be split between processes" in line for line in said), said
    assert "map-style Dataset" in said[0]


class _Stream(IterableDataset):
    def __init__(self, ds: object) -> None:
        self.ds = ds

    def __iter__(self):  # noqa: ANN204
        return (self.ds[i] for i in range(len(self.ds)))  # type: ignore[arg-type]


def test_a_stream_without_length_is_one_data_error(files) -> None:
    folder = files["folder"]
    lens = netlens.load(
        folder / "tiny.pt", arch=f"{folder / 'tinynet.py'}:Net", input_size=32, device="cpu"
    )
    loader = DataLoader(_Stream(lens.dataset(str(files["data"]))), batch_size=2)
    with pytest.raises(DataError, match="no length .*__len__"):
        lens.run("stats", loader)

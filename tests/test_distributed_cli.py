"""``netlens COMMAND --distributed 2``: the same files as one process, and failures in one line.

Every run here starts two worker processes through torch's launcher (gloo on CPU), on 23
generated 32-pixel images: a rank that meets a corrupt image with ``--strict``, a rank that is
killed, a rank that hangs — each ends the run with one line naming the rank, and nothing is
written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from dist_jobs import make_fixture
from typer.testing import CliRunner

from netlens.cli.app import app

KILLER = '''
import os, signal, time
from torch import nn

class Net(nn.Module):
    """Misbehaves on rank 1 after 8 images: KILLER=kill dies by SIGKILL, KILLER=term is stopped
    by SIGTERM, KILLER=hang sleeps."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.fc = nn.Linear(8, num_classes)
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        if os.environ.get("RANK") == "1" and self.seen > 8:
            if os.environ.get("KILLER") == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if os.environ.get("KILLER") == "term":
                os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(600)
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("dist-cli")
    model, data = make_fixture(folder)
    (folder / "killer.py").write_text(textwrap.dedent(KILLER))
    sys.path.insert(0, str(folder))
    try:
        import killer

        torch.manual_seed(0)
        torch.save(killer.Net().state_dict(), folder / "killer.pt")
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("killer", None)
    return {"folder": folder, "model": model, "data": data}


def netlens(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m netlens ARGS`` (with ``--distributed 2`` in ARGS: two workers)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("NETLENS_THREADS", None)
    return subprocess.run(
        [sys.executable, "-m", "netlens", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_stats_on_two_processes_writes_what_one_process_writes(files, tmp_path) -> None:
    common = ["--data", str(files["data"]), "--batch-size", "4", "--threads", "1", "--quiet"]
    one = CliRunner().invoke(
        app, ["stats", str(files["model"]), *common, "--out", str(tmp_path / "one")]
    )
    assert one.exit_code == 0, one.output
    two = netlens(
        "stats",
        str(files["model"]),
        *common,
        "--out",
        str(tmp_path / "two"),
        "--json",
        "--distributed",
        "2",
    )
    assert two.returncode == 0, two.stderr
    printed = json.loads(two.stdout)  # one JSON document: rank 0 reports, rank 1 stays quiet
    a = json.loads((tmp_path / "one" / "stats.json").read_text())
    b = json.loads((tmp_path / "two" / "stats.json").read_text())
    assert a["table"] == b["table"] == printed["table"]
    assert b["run"]["processes"] == 2 and "processes" not in a["run"]
    assert b["run"]["data"] == a["run"]["data"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )


def _corrupt_copy(data: Path, dest: Path) -> Path:
    """The data with its last image (rank 1's share) replaced by garbage."""
    import shutil

    shutil.copytree(data, dest)
    last = sorted(dest.rglob("*.png"))[-1]
    last.write_bytes(b"not a png")
    return last


def test_a_bad_item_on_rank_1_with_strict_is_one_line(files, tmp_path) -> None:
    bad = _corrupt_copy(files["data"], tmp_path / "bad")
    out = tmp_path / "out"
    done = netlens(
        "stats",
        str(files["model"]),
        "--data",
        str(tmp_path / "bad"),
        "--batch-size",
        "4",
        "--strict",
        "--quiet",
        "--out",
        str(out),
        "--distributed",
        "2",
    )
    assert done.returncode == 1
    said = lines(done.stderr)  # one line, from the rank that met the image
    assert len(said) == 1 and said[0].startswith("error: rank 1: ") and str(bad) in said[0]
    assert not out.exists()  # nothing written, not even the folder


def test_a_bad_item_on_rank_1_is_skipped_and_reported_by_rank_0(files, tmp_path) -> None:
    bad = _corrupt_copy(files["data"], tmp_path / "bad")
    done = netlens(
        "top",
        str(files["model"]),
        "--data",
        str(tmp_path / "bad"),
        "--layer",
        "layer3",
        "--batch-size",
        "4",
        "--quiet",
        "--out",
        str(tmp_path / "out"),
        "--distributed",
        "2",
    )
    assert done.returncode == 3, done.stderr
    said = [line for line in lines(done.stderr) if line.startswith("skipped:")]
    assert len(said) == 1 and str(bad) in said[0]
    doc = json.loads((tmp_path / "out" / "top-activations.json").read_text())
    assert doc["run"]["data"]["skipped"] == 1 and doc["samples"] == 22


def killer_stats(files, out: Path, env: dict[str, str]):  # noqa: ANN001, ANN201
    """``stats --distributed 2`` on the model whose rank 1 misbehaves as ``env["KILLER"]`` says."""
    folder = files["folder"]
    return netlens(
        *("stats", str(folder / "killer.pt"), "--arch", f"{folder / 'killer.py'}:Net"),
        *("--size", "32", "--data", str(files["data"]), "--batch-size", "4", "--quiet"),
        *("--out", str(out), "--distributed", "2"),
        env=env,
    )


def test_a_killed_rank_is_named_by_the_launcher(files, tmp_path) -> None:
    out = tmp_path / "out"
    done = killer_stats(files, out, {"KILLER": "kill"})
    assert done.returncode == 1
    assert lines(done.stderr) == [
        "error: rank 1 died (SIGKILL) and the run was stopped; nothing was written (out of memory?)"
    ]
    assert not out.exists()


def test_a_rank_stopped_by_sigterm_is_named_by_the_launcher(files, tmp_path) -> None:
    out = tmp_path / "out"
    done = killer_stats(files, out, {"KILLER": "term"})
    assert done.returncode == 1
    assert lines(done.stderr) == [
        "error: rank 1 died (SIGTERM) and the run was stopped; nothing was written"
    ]
    assert not out.exists()


def test_a_hanging_rank_ends_the_run_at_the_timeout(files, tmp_path) -> None:
    out = tmp_path / "out"
    # 10 s: on a loaded machine rank 0 itself can reach exchange 1 more than 4 s after rank 1
    done = killer_stats(files, out, {"KILLER": "hang", "NETLENS_DIST_TIMEOUT": "10"})
    assert done.returncode == 1
    said = lines(done.stderr)
    assert len(said) == 1 and said[0].startswith("error: rank 0: rank 1 (at exchange 1) did not")
    assert "within 10 s" in said[0] and "NETLENS_DIST_TIMEOUT" in said[0]
    assert not out.exists()

"""Output folders stay whole: an interrupted or failing ablate keeps an earlier run's files and
its finished rows where --resume finds them (a row cut off is run again); ``ablate(out=)`` and
``Report.save`` respect another run's lock; a full disk at commit leaves no partial set; SIGTERM
stops a command as Ctrl-C does (exit 143) and a killed run's staging folder is swept."""

from __future__ import annotations

import csv
import errno
import json
import pathlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import pytest
import torch
from typer.testing import CliRunner

import netlens
from netlens.analyzers.ablation.rows import StudyRows
from netlens.models.archs import resnet
from netlens.output import OutputBusyError, OutputSet, folder_lock

ARCH = {"num_classes": 3, "in_chans": 1, "img_size": 16, "widths": [4, 8], "blocks": [1, 1]}
KW = {"resamples": 20, "progress": False}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return resnet(**ARCH).eval()


def _data(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    return x, torch.arange(n) % 3


def _files(folder: Path) -> dict[str, bytes]:
    """The result files in ``folder`` (not the lock, nor an unfinished run's hidden rows)."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}


@contextmanager
def _interrupt_after(monkeypatch, rows: int) -> Iterator[None]:
    """Ctrl-C once the study holds ``rows`` rows (the baseline and ``rows - 1`` blocks)."""
    done = StudyRows.done

    def interrupted(self, key, outcomes):
        if len(self.rows) == rows:
            raise KeyboardInterrupt
        done(self, key, outcomes)

    monkeypatch.setattr(StudyRows, "done", interrupted)
    yield
    monkeypatch.setattr(StudyRows, "done", done)


def test_interrupted_ablate_leaves_the_earlier_run_and_resumes(tmp_path, monkeypatch) -> None:
    model, data = _model(), _data()
    netlens.ablate(model, data, out=tmp_path, **KW).save(tmp_path)
    before = _files(tmp_path)
    assert {"ablation.csv", "ablation-config.json", "ablation.manifest.json"} <= set(before)
    with _interrupt_after(monkeypatch, 2), pytest.raises(KeyboardInterrupt):
        netlens.ablate(model, data, metric="prob", out=tmp_path, **KW)
    assert _files(tmp_path) == before  # the earlier run's files, as they were
    with (tmp_path / ".ablation.rows.csv").open(newline="") as fh:
        assert [r["key"] for r in csv.DictReader(fh)] == ["baseline", "layer1.0"]
    resumed = netlens.ablate(model, data, metric="prob", out=tmp_path, resume=True, **KW)
    assert resumed.meta["resumed"] == 2
    assert resumed.table == netlens.ablate(model, data, metric="prob", **KW).table
    # the finished study's rows and settings replace the earlier run's; no hidden rows stay
    assert json.loads((tmp_path / "ablation-config.json").read_text())["metric"] == "prob"
    with (tmp_path / "ablation.csv").open(newline="") as fh:
        assert [r["metric"] for r in csv.DictReader(fh)] == ["prob"] * 3
    assert not list(tmp_path.glob(".ablation*"))


def _cli_setup(tmp_path: Path) -> list[str]:
    model, (x, y) = _model(), _data()
    path = netlens.save(model, tmp_path / "model.pt", arch="resnet", arch_kwargs=ARCH)
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        (tmp_path / "data" / f"c{int(label)}").mkdir(parents=True, exist_ok=True)
        pixels = ((img[0].clamp(-2, 2) + 2) / 4 * 255).to(torch.uint8).numpy()
        cv2.imwrite(str(tmp_path / "data" / f"c{int(label)}" / f"{i}.png"), pixels)
    return ["ablate", str(path), "--data", str(tmp_path / "data"), "--resamples", "20"]


def test_cli_ablate_failing_part_way_writes_no_result_file(tmp_path, monkeypatch) -> None:
    from netlens.cli.app import app

    args = [*_cli_setup(tmp_path), "--out", str(tmp_path / "out")]
    done = StudyRows.done

    def full_disk(self, key, outcomes):
        if len(self.rows) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        done(self, key, outcomes)

    monkeypatch.setattr(StudyRows, "done", full_disk)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and "No space left" in res.output
    assert _files(tmp_path / "out") == {}  # no ablation.csv, no ablation-config.json
    monkeypatch.setattr(StudyRows, "done", done)
    res = CliRunner().invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    written = sorted(_files(tmp_path / "out"))
    assert "ablation-config.json" in written and not list((tmp_path / "out").glob(".ablation*"))
    assert f"wrote {len(written)} files" in res.output  # ablation-config.json counted


def test_resume_runs_a_row_cut_off_again(tmp_path, monkeypatch) -> None:
    """A full disk (or a kill) part way through a row: --resume drops it and runs it again."""
    from netlens.cli.app import app

    args = _cli_setup(tmp_path)
    runner = CliRunner()
    fresh = runner.invoke(app, [*args, "--out", str(tmp_path / "fresh"), "--json"])
    args += ["--out", str(tmp_path / "out"), "--json"]
    with _interrupt_after(monkeypatch, 2):
        res = runner.invoke(app, args)
    assert res.exit_code == 130
    named = Path(res.output.split("finished rows are in ")[1].split(";")[0].replace("\n", ""))
    named.write_bytes(named.read_bytes()[:-30])  # the last row (layer1.0) cut off
    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    resumed = json.loads(res.stdout)
    assert resumed["resumed"] == 1  # the baseline
    assert resumed["table"] == json.loads(fresh.stdout)["table"]


@contextmanager
def _held(folder: Path) -> Iterator[None]:
    """``folder``'s lock held by another process."""
    code = "import time\nfrom netlens.output import folder_lock\n"
    code += f"with folder_lock({str(folder)!r}):\n    print('held', flush=True)\n    time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield
    finally:
        proc.kill()
        proc.wait()


def test_ablate_out_respects_another_runs_lock(tmp_path) -> None:
    with _held(tmp_path), pytest.raises(OutputBusyError):
        netlens.ablate(_model(), _data(), out=tmp_path, **KW)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".netlens.lock"]


def test_report_save_respects_another_runs_lock(tmp_path) -> None:
    from netlens.report.build import Report

    with _held(tmp_path), pytest.raises(OutputBusyError):
        Report("<html></html>", [], 0.0, "m").save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".netlens.lock"]


def test_full_disk_at_commit_leaves_no_partial_set(tmp_path, monkeypatch) -> None:
    with OutputSet(tmp_path, "cam") as out:
        out.write_text("a.txt", "earlier")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    write_text = pathlib.Path.write_text

    def full(self, *args, **kwargs):
        if self.name == ".manifest":
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    with pytest.raises(OSError, match="No space"), OutputSet(tmp_path, "cam") as out:
        out.write_text("a.txt", "later")
        out.write_text("b.txt", "later")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


SIGTERMED = """
import os, signal, sys, time, typer
from netlens.cli.common import cli_errors
from netlens.output import OutputSet

@cli_errors
def command():
    with OutputSet(sys.argv[1], "cam") as out:
        out.write_text("a.txt", "half a result")
        os.kill(os.getpid(), signal.SIGTERM)  # timeout, SLURM, docker stop
        time.sleep(30)

try:
    command()
except typer.Exit as exc:
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler given back
    sys.exit(exc.exit_code)
"""


def test_sigterm_stops_a_command_as_ctrl_c_does(tmp_path) -> None:
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-c", SIGTERMED, str(out)], capture_output=True)
    assert res.returncode == 143, res.stderr
    assert res.stderr.decode().strip() == "interrupted (SIGTERM)"
    assert not out.exists()  # the folder as it was: none


def test_a_workers_own_sigterm_handler_is_kept() -> None:
    from netlens.cli.common import cli_errors

    def own(signum, frame):  # as netlens.distributed.setup.exit_on_sigterm installs
        raise SystemExit(143)

    seen = []
    previous = signal.signal(signal.SIGTERM, own)
    try:
        cli_errors(lambda: seen.append(signal.getsignal(signal.SIGTERM)))()
        assert seen == [own] and signal.getsignal(signal.SIGTERM) is own
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_taking_the_lock_sweeps_a_killed_runs_staging(tmp_path) -> None:
    stale = tmp_path / ".netlens-staging-abc123"
    stale.mkdir()
    (stale / "img0.png").write_bytes(b"half")
    with folder_lock(tmp_path):
        pass
    assert not stale.exists()

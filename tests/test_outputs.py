"""Outputs never mix or tear: atomic result sets, a manifest, and one run per folder at a time."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from netlens.errors import NetlensError, NetlensWarning
from netlens.output import OutputBusyError, OutputSet, folder_lock, safe_name


def _consistent(folder: Path, name: str) -> list[str]:
    """The manifest lists exactly the result's files, each with its true checksum."""
    manifest = json.loads((folder / f"{name}.manifest.json").read_text())
    listed = {f["file"]: f["sha256"] for f in manifest["files"]}
    for file, digest in listed.items():
        assert hashlib.sha256((folder / file).read_bytes()).hexdigest() == digest, file
    doc = json.loads((folder / f"{name}.json").read_text())
    assert set(doc["files"]) == set(listed)
    return sorted(listed)


def test_a_failed_write_leaves_the_folder_as_it_was(tmp_path: Path) -> None:
    with OutputSet(tmp_path, "r") as out:
        out.write_text("a.txt", "first")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(RuntimeError), OutputSet(tmp_path, "r") as out:
        out.write_text("a.txt", "second")
        out.write_text("b.txt", "half")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "a.txt").read_text() == "first"


def test_a_second_run_replaces_the_first_runs_files(tmp_path: Path) -> None:
    with OutputSet(tmp_path, "r") as out:
        out.write_text("old.txt", "1")
        out.write_text("both.txt", "1")
    with pytest.warns(NetlensWarning, match=r"earlier r run: its 1 files .*\(old.txt\)"):
        with OutputSet(tmp_path, "r") as out:
            out.write_text("both.txt", "2")
            out.write_text("new.txt", "2")
    assert not (tmp_path / "old.txt").exists()  # a stale file of the earlier run is gone
    names = json.loads((tmp_path / "r.manifest.json").read_text())["files"]
    assert [f["file"] for f in names] == ["both.txt", "new.txt"]


def test_plain_names_only(tmp_path: Path) -> None:
    with OutputSet(tmp_path, "r") as out:
        for bad in ("../x", "a/b", ".hidden"):
            with pytest.raises(NetlensError):
                out.write_text(bad, "x")


def test_safe_names() -> None:
    assert safe_name("layer4.1") == "layer4.1" and safe_name("tabby cat") == "tabby cat"
    assert "/" not in safe_name("tabby cat/../x") and not safe_name("../x").startswith(".")
    assert safe_name("\udcff\udcfe.png").isprintable()
    assert len(safe_name("a" * 500).encode()) <= 80
    assert "/" not in safe_name("a/b") and "\\" not in safe_name("a\\b")
    assert safe_name("a/b") != safe_name("a-b") != safe_name("a_b")  # never the same name


def test_the_lock_refuses_a_second_process(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "from netlens.output import folder_lock\n"
        "with folder_lock(sys.argv[1]):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(30)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusyError, match="another netlens run"), folder_lock(tmp_path):
            pass
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(tmp_path):  # the OS released it with the process
        pass


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import cv2

    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(6):
        cv2.imwrite(str(folder / f"img{i}.png"), rng.integers(0, 255, (64, 64, 3), np.uint8))
    return folder


def test_two_concurrent_cli_runs_never_mix(tmp_path: Path, images: Path) -> None:
    """Two `netlens cam` commands into one folder at once: one refuses, or both finish one after
    the other; either way the folder holds one consistent result set."""
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start(method: str) -> subprocess.Popen:
        main = "from netlens.cli.app import main; main()"
        args = ["cam", str(images), "--out", str(out), "--quiet", "--method", method]
        return subprocess.Popen(
            [sys.executable, "-c", main, *args],
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    first = start("scorecam")
    time.sleep(0.5)
    second = start("gradcam")
    results = [(p.wait(timeout=300), p.stderr.read()) for p in (first, second)]  # type: ignore[union-attr]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 1]), results
    if codes == [0, 1]:
        refused = next(err for code, err in results if code == 1)
        assert "another netlens run is writing" in refused
        assert len(refused.strip().splitlines()) == 1
    files = _consistent(out, "cam")
    methods = {f.split("_")[1] for f in files if f.endswith(".npy")}
    assert len(methods) == 1  # every map comes from the run cam.json describes
    meta = json.loads((out / "cam.json").read_text())
    assert {meta["method"]} == methods


def test_a_second_cam_run_says_it_replaced_the_first(tmp_path: Path) -> None:
    """``cam -m gradcam`` then ``cam -m layercam`` into one folder: the second run's files
    replace the first's (one run per folder), and the command says so."""
    from typer.testing import CliRunner

    from netlens.cli.app import app

    out = tmp_path / "maps"
    first = CliRunner().invoke(app, ["cam", "-m", "gradcam", "--out", str(out)])
    assert first.exit_code == 0 and "warning" not in first.output
    second = CliRunner().invoke(app, ["cam", "-m", "layercam", "--out", str(out)])
    assert second.exit_code == 0
    assert "earlier cam run: its 15 files" in " ".join(second.output.split())
    assert not list(out.glob("*gradcam*"))

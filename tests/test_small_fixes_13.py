"""Sweep 13's smaller fixes: a saved Lens keeps its output choice; regression targets worded as
outputs; the run header's command as typed under --distributed; no lock file left in a folder
a killed run made."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import netlens
from netlens.cli.app import app
from netlens.errors import NetlensError

pytestmark = [pytest.mark.usefixtures("one_thread")]

TWO_HEAD = textwrap.dedent(
    """
    import torch
    from torch import nn


    class TwoHead(nn.Module):
        def __init__(self, num_classes=5):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.aux = nn.Linear(4, 3)
            self.fc = nn.Linear(4, num_classes)

        def forward(self, x):
            h = torch.relu(self.conv(x)).mean(dim=(2, 3))
            return self.aux(h), self.fc(h)
    """
)


def _two_head(tmp_path: Path) -> tuple[nn.Module, str]:
    """A model whose forward returns (aux: 3 scores, logits: 5), aux preferring class 2 and the
    logits class 4; and its arch as ``file.py:Class``."""
    file = tmp_path / "twohead.py"
    file.write_text(TWO_HEAD)
    sys.path.insert(0, str(tmp_path))
    try:
        import importlib

        mod = importlib.import_module("twohead")
        importlib.reload(mod)
    finally:
        sys.path.remove(str(tmp_path))
    torch.manual_seed(0)
    model = mod.TwoHead().eval()
    with torch.no_grad():
        model.aux.bias.copy_(torch.tensor([0.0, 0.0, 50.0]))
        model.fc.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 50.0]))
    return model, f"{file}:TwoHead"


def _image(path: Path, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


SPEC = {"input_size": 32, "mean": (0.5,) * 3, "std": (0.5,) * 3}


# -- 1: netlens.save keeps the Lens' output= ---------------------------------------------------
def test_save_records_output_and_load_uses_it(tmp_path: Path) -> None:
    model, arch = _two_head(tmp_path)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)[1]  # the reference: the second output, read by hand
    path = netlens.save(netlens.load(model, output=1, **SPEC), tmp_path / "m.pt", arch=arch)
    assert torch.load(path, weights_only=True)["record"]["output"] == 1
    lens = netlens.load(path, arch=arch)
    assert lens.output_key == 1
    torch.testing.assert_close(lens.output(x), logits)
    assert netlens.load(path, arch=arch, output=0).output_key == 0  # said again: it wins


def test_save_output_argument_and_files_without_one(tmp_path: Path) -> None:
    model, arch = _two_head(tmp_path)
    plain = netlens.save(model, tmp_path / "plain.pt", arch=arch)
    assert "output" not in torch.load(plain, weights_only=True)["record"]
    assert netlens.load(plain, arch=arch).output_key is None  # a file without one: the default
    named = netlens.save(model, tmp_path / "named.pt", arch=arch, output=1)
    assert netlens.load(named, arch=arch).output_key == 1
    with pytest.raises(NetlensError, match="output="):
        netlens.save(model, tmp_path / "bad.pt", arch=arch, output=[1])
    # a Lens told to explain the default again drops the choice its file recorded
    lens = netlens.load(named, arch=arch)
    lens.output_key = None
    again = netlens.save(lens, tmp_path / "again.pt")
    assert "output" not in torch.load(again, weights_only=True)["record"]


def test_cli_uses_the_recorded_output(tmp_path: Path) -> None:
    model, arch = _two_head(tmp_path)
    path = netlens.save(netlens.load(model, output=1, **SPEC), tmp_path / "m.pt", arch=arch)
    img = _image(tmp_path / "a.png")
    targets = {}
    for name, extra in (("recorded", []), ("told", ["--output", "0"])):
        out = tmp_path / name
        args = ["cam", str(path), str(img), "--arch", arch, "-q", "--out", str(out), *extra]
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, r.output
        images = json.loads((out / "cam.json").read_text())["images"]
        targets[name] = [row["target"] for row in images]
    assert targets == {"recorded": [4], "told": [2]}  # the logits' prediction; the aux head's


# -- 2: a regression output is "output K", not a class -------------------------------------
class _Flat(nn.Module):
    """Three regression outputs that do not depend on the image: every map is flat."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_regression_cam_and_sanity_notes_say_output(recwarn: pytest.WarningsRecorder) -> None:
    lens = netlens.load(_Flat().eval(), task="regression", **SPEC)
    x = torch.rand(2, 3, 32, 32)
    for target in (1, "output:1"):
        notes = lens.cam(x, target=target).meta["warnings"]
        assert notes and all("map for output 1 is flat" in n for n in notes), notes
        notes = lens.run("sanity", x, target=target).meta["warnings"]
        flat = [n for n in notes if "is flat (no evidence" in n]
        assert flat and all("map for output 1 " in n for n in flat), notes
        assert lens.cam(x, target=target).table[0]["target_name"] == "output 1"


def test_regression_sanity_asks_for_an_output_target() -> None:
    lens = netlens.load(_Flat().eval(), task="regression", **SPEC)
    with pytest.raises(NetlensError, match="output:K"):
        lens.run("sanity", torch.rand(2, 3, 32, 32), target=lambda out: out[:, 1])


# -- 3: the run header's command under --distributed --------------------------------------
def _fake_launch(monkeypatch: pytest.MonkeyPatch, worker) -> list:
    """torch's launcher replaced by ``worker(args)``, run in this process with the environment
    the real launcher's workers get; returns what each call returned."""
    import torch.distributed.launcher.api as api

    seen: list = []

    def elastic_launch(config, entrypoint):
        return lambda *args: seen.append(worker(list(args)))

    monkeypatch.setattr(api, "elastic_launch", elastic_launch)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    return seen


def test_distributed_header_command_as_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    from netlens.distributed.launch import relaunch
    from netlens.provenance import run_header

    lens = netlens.load(_Flat().eval(), task="regression", **SPEC)
    typed = ["cam", "m.pt", "imgs", "--distributed", "2", "--out", "o"]

    def worker(args: list[str]) -> str:
        assert args[:2] == ["-m", "netlens"]
        key = "NETLENS_LAUNCHER_PID"
        launcher = os.environ[key]
        # a worker is another process than its launcher: its argv lacks --distributed
        monkeypatch.setenv(key, str(os.getppid()))
        monkeypatch.setattr(sys, "argv", ["netlens", *args[2:]])
        try:
            at = datetime.now(timezone.utc)
            return run_header(lens, started=at, seconds=0.0, options={})["command"]
        finally:
            monkeypatch.setenv(key, launcher)

    seen = _fake_launch(monkeypatch, worker)
    assert relaunch(2, typed) == 0
    assert seen == ["netlens " + " ".join(typed)]


# -- 5: a folder made by a run killed with SIGKILL ----------------------------------------
KILLED = textwrap.dedent(
    """
    import sys, time
    from netlens.output import folder_lock

    with folder_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
    """
)


def _killed_in(folder: Path) -> None:
    """A process that takes ``folder``'s lock (making the folder) and is killed by SIGKILL."""
    p = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout.readline().strip() == "locked"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)


def test_distributed_launcher_removes_a_killed_rank0s_new_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from netlens.distributed.launch import relaunch

    out = tmp_path / "new_out"
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "mine.txt").write_text("the user's")

    def worker(args: list[str]) -> None:
        _killed_in(out)  # rank 0 (a child of this launcher) made the folder, then was killed
        _killed_in(kept)  # a folder that was there: not the launcher's to remove
        assert sorted(p.name for p in out.iterdir()) == [".netlens.lock"]

    _fake_launch(monkeypatch, worker)
    relaunch(2, ["cam", "--out", str(out), "--distributed", "2"])
    assert not out.exists()
    assert sorted(p.name for p in kept.iterdir()) == [".netlens.lock", "mine.txt"]


def test_next_run_removes_a_killed_runs_empty_folder(tmp_path: Path) -> None:
    from netlens.output import folder_lock

    out = tmp_path / "new_out"
    _killed_in(out)
    assert sorted(p.name for p in out.iterdir()) == [".netlens.lock"]  # SIGKILL: nothing ran
    with folder_lock(out):  # the next run is not blocked, and writes nothing either
        pass
    assert not out.exists()
    _killed_in(out)
    with folder_lock(out):  # one that writes keeps its files
        (out / "a.txt").write_text("x")
    assert sorted(p.name for p in out.iterdir()) == [".netlens.lock", "a.txt"]


def test_missing_mask_message_names_the_image_and_the_mask(tmp_path: Path) -> None:
    """The missing mask's message names the image as it is (``img1.jpg``), not with the mask's
    ``.png``, and the mask path looked for."""
    data, masks = tmp_path / "data", tmp_path / "masks"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        (masks / c).mkdir(parents=True)
        pixels = (rng.random((32, 32, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(data / c / "img1.jpg")
        if c == "a":
            Image.fromarray(np.full((32, 32), 255, np.uint8)).save(masks / c / "img1.png")
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    ).eval()
    torch.save(model, tmp_path / "m.pt")
    r = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(tmp_path / "m.pt"),
            "--trust",
            "--data",
            str(data),
            "--masks",
            str(masks),
            "--input-size",
            "32",
            "--metric",
            "pointing",
            "-q",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert r.exit_code == 1
    line = next(x for x in r.output.splitlines() if "no mask" in x)
    assert str(Path("b") / "img1.jpg") in line and str(Path("b") / "img1.png") in line
    assert f"image {masks}" not in line and "img1.png for image" in line
    assert not (tmp_path / "out").exists()

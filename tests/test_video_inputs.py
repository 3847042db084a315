"""A video model (its first convolution 3-D, N×C×T×H×W in) given images or a 5-D example: one
line saying what it is and what to do, not torch's error or the input-size advice."""

from __future__ import annotations

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


def _video() -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    ).eval()


def test_a_5d_example_is_refused_not_read_as_channels() -> None:
    model, x = _video(), torch.rand(1, 3, 4, 16, 16)
    model(x)  # the model runs on it
    with pytest.raises(NetlensError, match="video model .*leave it out"):
        netlens.load(model, example=x)


@pytest.mark.parametrize("command", ["features", "stats", "cam"])
def test_images_into_a_video_model_say_it_is_one(tmp_path: Path, command: str) -> None:
    torch.save(_video(), tmp_path / "v.pt")
    (tmp_path / "data" / "cls").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((16, 16, 3), 100 + i, np.uint8)).save(
            tmp_path / f"data/cls/{i}.png"
        )
    image = str(tmp_path / "data" / "cls" / "0.png")
    where = ["-d", str(tmp_path / "data")] if command == "stats" else [image]
    layer = ["-l", "0"] if command == "features" else []
    r = CliRunner().invoke(
        app,
        [
            command,
            str(tmp_path / "v.pt"),
            *where,
            *layer,
            "--trust",
            "-q",
            "-o",
            str(tmp_path / "o"),
        ],
    )
    assert r.exit_code == 1
    line = r.output.strip().splitlines()[-1]
    assert "is a video model" in line and "RuntimeError" not in line, r.output
    assert not (tmp_path / "o").exists()

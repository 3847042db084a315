"""The report's rerun commands for a model held in memory carry the load options given in
Python (class names, task), as they do for a model file; the page is named by the model file's
name, not its folders; the notebook colour bar says what its ends are (each map is min-max
scaled, so the bottom is the map's minimum, not 0)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import torch
from torch import nn

import netlens
from netlens.report import build_report
from netlens.report.build import page_path

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore")]

CLASSES = ["zebra", "café co", "rocket"]


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()  # fmt: skip


def test_in_memory_rerun_commands_carry_classes_and_task() -> None:
    lens = netlens.load(small_cnn(), classes=CLASSES, task="multilabel", input_size=32)
    rep = build_report(lens, torch.rand(1, 3, 32, 32), sections="card", progress=False)
    line = next(s for s in rep.sections if s.key == "card").commands[0]
    assert line.startswith("netlens layers MODEL") and "given in memory" in line
    words = shlex.split(line.split("#")[0])
    assert words[words.index("--classes") + 1] == ",".join(CLASSES)
    assert words[words.index("--task") + 1] == "multilabel"


def test_the_page_is_named_by_the_model_file_not_its_folders(tmp_path: Path) -> None:
    model = "/srv/models/exp 3/r18.pt"
    assert page_path(tmp_path, model) == tmp_path / "report-r18.pt.html"
    assert page_path(tmp_path, "zoo:shapes-allconv").name.startswith("report-zoo")


def test_notebook_colour_bar_names_its_ends() -> None:
    lens = netlens.load(small_cnn(), classes=CLASSES, input_size=32)
    res = lens.cam(torch.rand(2, 3, 32, 32), method="gradcam", layer="1")
    from netlens.render.cam_display import cam_grid_figure

    fig = cam_grid_figure(res, [0, 1])
    bar = fig.axes[-1]  # the colour bar, added last
    labels = [t.get_text() for t in bar.get_yticklabels()]
    assert labels == ["map min", "map max"]

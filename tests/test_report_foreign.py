"""The report on models, data and options it first met badly: each test a bug it had."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import netlens
from netlens.cli.app import app
from netlens.report import build_report

CLASSES = ["cat", "cup", "rocket"]


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()


def small_lens(**kw) -> netlens.Lens:  # noqa: ANN003
    return netlens.load(small_cnn(), classes=CLASSES, input_size=32, mean=(0.5,), std=(0.5,), **kw)


def write_png(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A class-sorted folder: 3 classes × 2 images."""
    for c, name in enumerate(CLASSES):
        for k in range(2):
            write_png(tmp_path / "val" / name / f"{name}{k}.png", 10 * c + k)
    return tmp_path / "val"


def section(rep, key: str):  # noqa: ANN001, ANN201
    return next(s for s in rep.sections if s.key == key)


def test_cam_warnings_are_shown_as_notes(monkeypatch) -> None:  # noqa: ANN001
    """A headless backbone: `netlens cam` warned "outputs look like features", the page not."""
    lens = small_lens()
    real = netlens.Lens.cam

    def cam(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        res = real(self, *a, **k)
        res.meta["warnings"] = ["the model's 512 outputs look like features, not class scores"]
        return res

    monkeypatch.setattr(netlens.Lens, "cam", cam)
    x = torch.rand(2, 3, 32, 32)
    rep = build_report(lens, x, sections="cam", methods="gradcam,layercam", progress=False)
    notes = section(rep, "cam").notes
    assert notes == ["gradcam: the model's 512 outputs look like features, not class scores"] + [
        "layercam: the model's 512 outputs look like features, not class scores"
    ]
    assert "look like features, not class scores" in rep.html


def test_data_sections_say_they_used_the_first_images_and_which_classes(folder) -> None:  # noqa: ANN001
    rep = build_report(small_lens(), data=str(folder), sections="stats", limit=2, progress=False)
    stats = section(rep, "stats")
    assert "the first 2 of 6 images (1 of 3 classes)" in stats.intro
    assert any("Only 1 of the data's 3 classes" in n and "--limit 6" in n for n in stats.notes)
    assert "--limit 6" in rep.html


def test_cli_rerun_commands_repeat_every_load_option(tmp_path: Path) -> None:
    out = tmp_path / "o"
    args = ["report", "--sections", "card,kernels", "--out", str(out), "-q"]
    args += ["--mean", "0.5", "--std", "0.25", "--interpolation", "bicubic", "--crop-pct", "0.9"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    page = next(out.glob("*.html")).read_text()
    commands = re.findall(r"<code[^>]*>(netlens [^<]*)</code>", page)
    assert commands
    for c in commands:
        for flag in ("--mean 0.5", "--std 0.25", "--interpolation bicubic", "--crop-pct 0.9"):
            assert flag in c, c


def test_python_report_names_the_model_file_and_its_options(tmp_path: Path, folder) -> None:  # noqa: ANN001
    f = tmp_path / "m.pt"
    torch.save(small_cnn(), f)
    lens = netlens.load(str(f), trust=True, classes=CLASSES, input_size=32, mean=(0.5,), std=(0.5,))
    rep = build_report(lens, data=str(folder), sections="card,stats", limit=2, progress=False)
    layers = section(rep, "card").commands[0]
    words = shlex.split(layers)
    assert words[:3] == ["netlens", "layers", str(f)]
    assert "--classes cat,cup,rocket" in layers and "--input-size 3,32,32" in layers
    assert f"--data {folder}" in section(rep, "stats").commands[0]
    memory = build_report(small_lens(), torch.rand(1, 3, 32, 32), sections="card", progress=False)
    line = section(memory, "card").commands[0]
    assert line.startswith("netlens layers MODEL") and "given in memory" in line


def test_images_taken_from_the_data_are_named_by_their_files(folder) -> None:  # noqa: ANN001
    rep = build_report(
        small_lens(), data=str(folder), sections="cam", methods="gradcam", max_images=2
    )
    cam = section(rep, "cam")
    assert [r["name"] for r in cam.parts["rows"]] == ["cat0", "cat1"]
    words = shlex.split(cam.commands[0])
    assert str(folder / "cat" / "cat0.png") in words and str(folder / "cat" / "cat1.png") in words


def test_cli_report_does_not_offer_distributed(tmp_path: Path) -> None:
    out = tmp_path / "o"
    res = CliRunner().invoke(app, ["report", "--distributed", "2", "--out", str(out)])
    assert res.exit_code != 0 and "No such option: --distributed" in res.output
    assert "--distributed" not in CliRunner().invoke(app, ["report", "--help"]).output
    assert not out.exists()


def test_an_unreadable_first_image_leaves_features_and_the_image_count(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "aaa_broken.png").write_text("not an image")
    for k in range(3):
        write_png(tmp_path / "imgs" / f"b{k}.png", k)
    rep = build_report(
        small_lens(),
        str(tmp_path / "imgs"),
        sections="cam,features",
        methods="gradcam",
        max_images=2,
        progress=False,
    )
    assert not rep.skipped
    assert [r["name"] for r in section(rep, "cam").parts["rows"]] == ["b0", "b1"]
    assert any("aaa_broken.png" in line for line in rep.skipped_inputs)
    assert "b0.png" in section(rep, "features").commands[0]


class Probe(nn.Module):
    """A linear probe on a frozen backbone (run under no_grad): no gradient reaches it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            f = self.backbone(x)
        return self.head(f.mean((2, 3)))


def test_one_failing_method_leaves_the_others() -> None:
    lens = netlens.load(Probe().eval(), classes=CLASSES, input_size=16, mean=(0.5,), std=(0.5,))
    x = torch.rand(1, 3, 16, 16)
    rep = build_report(lens, x, sections="cam,sanity", methods="gradcam,scorecam", progress=False)
    assert not rep.skipped
    cam = section(rep, "cam")
    assert [h.split(" · ")[0] for h in cam.parts["methods"]] == ["scorecam"]
    assert any(n.startswith("gradcam failed on this model:") for n in cam.notes)
    assert cam.intro.endswith(", 1 method.") and "shown: scorecam" in cam.notes[0]
    sanity = section(rep, "sanity")
    assert [m for m, *_ in sanity.parts["verdicts"]] == ["scorecam"]
    assert "Left out: gradcam" in sanity.notes[0]


def test_ablation_falls_back_to_zero_when_identity_cannot_skip() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 3),
    ).eval()
    lens = netlens.load(model, classes=CLASSES, input_size=16, mean=(0.5,), std=(0.5,))
    data = (torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2]))
    rep = build_report(lens, data=data, sections="ablate", progress=False)
    ablate = section(rep, "ablate")
    assert "(zero)" in ablate.intro and "mode zero" in ablate.notes[0]
    assert "--mode zero" in ablate.commands[0] and "--mode mean" not in rep.html


def test_a_regression_model_explains_output_0() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    model = nn.Sequential(model, nn.Linear(4, 1)).eval()
    lens = netlens.load(model, task="regression", input_size=16, mean=(0.5,), std=(0.5,))
    x = torch.rand(1, 3, 16, 16)
    rep = build_report(lens, x, sections="cam,sanity", methods="gradcam", progress=False)
    assert not rep.skipped
    for key in ("cam", "sanity"):
        s = section(rep, key)
        assert any("output 0" in n for n in s.notes)
        assert "--target output:0" in s.commands[0]


def test_cli_out_ending_in_html_writes_that_file(tmp_path: Path) -> None:
    page = tmp_path / "sub" / "page.html"
    res = CliRunner().invoke(app, ["report", "--sections", "card", "--out", str(page), "-q"])
    assert res.exit_code == 0, res.output
    assert page.is_file() and "<html" in page.read_text()


def test_wide_tables_scroll_and_a_narrow_histogram_title_fits() -> None:
    css = (Path(netlens.__file__).parent / "report" / "templates" / "card.css").read_text()
    rule = re.search(r"\.nl-table\{([^}]*)\}", css).group(1)
    assert "overflow-x:auto" in rule
    from netlens.render.stats_figures import histograms_figure

    hist = ("layer1", np.ones(10), np.linspace(0, 1, 11), 0.5, 0.1)
    fig = histograms_figure([hist], {"samples": 4, "eps": 0})
    fig.canvas.draw()
    box = fig._suptitle.get_window_extent()
    width = fig.get_size_inches()[0] * fig.dpi
    assert box.x0 >= 0 and box.x1 <= width

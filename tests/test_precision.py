"""Models in half or double precision, and whole pickled models whose class is elsewhere.

netlens makes images in float32; a model saved in another precision gets them in its own
(``Lens.place``, and the data streams of every analyzer), instead of failing with torch's
"Input type (float) and bias type (double) should be the same".
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import netlens
from netlens.errors import ModelLoadError


def net(num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    ).eval()


@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
def test_a_double_model_explains_float_images_as_the_float_model(method: str) -> None:
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    ref = netlens.cam(net(), x, method=method, layer="3")
    model = net().double()
    got = netlens.cam(model, x, method=method, layer="3")
    assert np.array_equal(got.targets, ref.targets)
    np.testing.assert_allclose(got.heatmaps, ref.heatmaps, atol=1e-4)
    assert ref.heatmaps.std() > 0.05
    assert all(p.dtype == torch.float64 for p in model.parameters())  # left as it was


def test_a_half_model_explains_float_images_close_to_the_float_model() -> None:
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    ref = netlens.cam(net(), x, layer="3").heatmaps
    got = netlens.cam(net().half(), x, layer="3").heatmaps
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "ablationcam"])
def test_a_bfloat16_model_explains_float_images_close_to_the_float_model(method: str) -> None:
    """numpy has no bfloat16: the weights' digest (in every JSON) failed on such a model."""
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    ref = netlens.cam(net(), x, method=method, layer="3").heatmaps
    result = netlens.cam(net().bfloat16(), x, method=method, layer="3")
    assert np.corrcoef(result.heatmaps.ravel(), ref.ravel())[0, 1] > 0.98
    assert len(result.meta["run"]["model"]["sha256"]) == 64


def test_data_streams_come_in_the_model_precision() -> None:
    images = torch.rand(6, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    data = (images, torch.tensor([0, 1, 2, 3, 4, 0]))
    got = netlens.load(net().double()).run("stats", data, layers="3", batch_size=4).table
    ref = netlens.load(net()).run("stats", data, layers="3", batch_size=4).table
    assert [r["layer"] for r in got] == [r["layer"] for r in ref] == ["3"]
    assert got[0]["mean"] == pytest.approx(ref[0]["mean"], rel=1e-5)
    assert got[0]["std"] == pytest.approx(ref[0]["std"], rel=1e-5)


NETS = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))
"""


def test_a_pickled_model_whose_class_is_in_the_current_folder_loads(tmp_path: Path) -> None:
    (tmp_path / "tinynets.py").write_text(textwrap.dedent(NETS))
    save = "import torch, tinynets; torch.save(tinynets.Tiny().half(), 'tiny.pt')"
    subprocess.run([sys.executable, "-c", save], cwd=tmp_path, check=True)
    image = tmp_path / "img.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8))
    cmd = [sys.executable, "-m", "netlens", "cam", "tiny.pt", "img.png", "--trust"]
    done = subprocess.run([*cmd, "--out", "o"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "o" / "cam.json").is_file()
    # from another folder the class cannot be found: one line that says what to do
    other = tmp_path / "elsewhere"
    other.mkdir()
    done = subprocess.run(
        [*cmd[:4], str(tmp_path / "tiny.pt"), str(image), "--trust"],
        cwd=other,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "needs the Python module 'tinynets'" in done.stdout + done.stderr


def test_a_model_pickled_from_a_script_says_to_save_its_state_dict(tmp_path: Path) -> None:
    script = textwrap.dedent(NETS) + "\ntorch.save(Tiny(), 'main.pt')\n"
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True)
    with pytest.raises(ModelLoadError, match=r"Tiny was defined in a script or notebook") as err:
        netlens.load(tmp_path / "main.pt", trust=True)
    assert "--arch FILE.py:Tiny" in str(err.value) and "\n" not in str(err.value)

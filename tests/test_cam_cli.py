"""``netlens cam`` end to end through typer's CliRunner, on a tiny saved model."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import timm
import torch
from typer.testing import CliRunner

import netlens
from netlens.cli.app import app
from netlens.images import Preprocess

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cam")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    lens = netlens.Lens(model, Preprocess(size=(64, 64)), classes=["cat", "dog", "bird"])
    netlens.save(lens, root / "tiny.pt", arch="resnet18")
    imgs = root / "imgs"
    imgs.mkdir()
    img = np.full((48, 80, 3), 200, np.uint8)
    cv2.circle(img, (20, 24), 12, (0, 0, 255), -1)
    cv2.imwrite(str(imgs / "a.png"), img)
    cv2.imwrite(str(imgs / "b.jpg"), img[:, ::-1].copy())
    (root / "notes.jpg").write_text("not an image")
    return root


def test_cam_writes_overlays_figures_maps_and_json(files: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = runner.invoke(
        app,
        [
            "cam",
            str(files / "tiny.pt"),
            str(files / "imgs"),
            str(files / "notes.jpg"),
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 3, res.output  # finished, with a skipped input
    assert "layer4" in res.output and "auto" in res.output
    assert "notes.jpg" in res.output  # the unreadable file is reported, the others done
    target = json.loads((out / "cam.json").read_text())["images"][0]["target_name"]
    overlay = cv2.imread(str(out / f"a_gradcam_layer4_{target}.png"))
    assert overlay.shape == (48 * 6, 80 * 6, 3)  # the original shape, enlarged to be readable
    assert (out / "a_gradcam_layer4_figure.png").exists()
    assert (out / "b_gradcam_layer4_figure.png").exists()
    heat = np.load(out / f"a_gradcam_layer4_{target}.npy")
    assert heat.shape == (64, 64) and heat.dtype == np.float32
    assert 0.0 <= heat.min() and heat.max() <= 1.0
    summary = json.loads((out / "cam.json").read_text())
    row = summary["images"][0]
    assert row["image"] == "a" and row["method"] == "gradcam" and row["layer"] == "layer4"
    assert row["target"] == row["prediction"] and 0 < row["probability"] <= 1
    assert row["target_name"] in ("cat", "dog", "bird")
    assert f"a_gradcam_layer4_{target}.png" in row["files"]
    assert "notes.jpg" in summary["skipped"][0]
    listed = json.loads((out / "cam.manifest.json").read_text())["files"]
    assert {f["file"] for f in listed} == {p.name for p in out.iterdir()} - {
        "cam.manifest.json",
        ".netlens.lock",
    }
    again = runner.invoke(
        app,
        [
            "cam",
            str(files / "tiny.pt"),
            str(files / "imgs"),
            str(files / "notes.jpg"),
            "--out",
            str(out),
            "--skip-bad",
        ],
    )
    assert again.exit_code == 0, again.output


def test_json_top_k_and_class_names(files: Path, tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        [
            "cam",
            str(files / "tiny.pt"),
            str(files / "imgs" / "a.png"),
            "--top",
            "2",
            "--method",
            "gradcampp",
            "--json",
            "--out",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    row = summary["images"][0]
    assert summary["method"] == "gradcam++" and len(row["target"]) == 2
    for name in row["target_name"]:
        assert (tmp_path / f"a_gradcam++_layer4_{name}.png").exists()
        assert np.load(tmp_path / f"a_gradcam++_layer4_{name}.npy").shape == (64, 64)


def test_target_by_name_and_explicit_layer(files: Path, tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        [
            "cam",
            str(files / "tiny.pt"),
            str(files / "imgs" / "b.jpg"),
            "--target",
            "bird",
            "--layer",
            "layer3",
            "--method",
            "eigencam",
            "--out",
            str(tmp_path),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)["images"][0]
    assert row["target"] == 2 and row["layer"] == "layer3"
    assert (tmp_path / "b_eigencam_layer3_bird.png").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--target", "7"], "out of range"),
        (["--target", "zebra"], "unknown class"),
        (["--layer", "fc"], "no spatial extent"),
        (["--layer", "layer9"], "no layer 'layer9'"),
        (["--method", "nope"], "unknown CAM method"),
        (["--method", "cam", "--layer", "layer3"], "use --method gradcam"),
    ],
)
def test_bad_input_is_one_line(files: Path, tmp_path: Path, args: list[str], message: str) -> None:
    res = runner.invoke(
        app,
        [
            "cam",
            str(files / "tiny.pt"),
            str(files / "imgs" / "a.png"),
            *args,
            "--out",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 1
    assert message in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def test_only_non_images_fails_with_one_line(files: Path, tmp_path: Path) -> None:
    res = runner.invoke(
        app, ["cam", str(files / "tiny.pt"), str(files / "notes.jpg"), "--out", str(tmp_path)]
    )
    assert res.exit_code == 1 and "cannot decode" in res.output


def test_default_zoo_model_and_its_samples(tmp_path: Path) -> None:
    from netlens.models import zoo

    if zoo.DEFAULT not in zoo.names():
        pytest.skip("the default zoo model is not bundled in this checkout")
    res = runner.invoke(app, ["cam", "--method", "cam", "--out", str(tmp_path / "cam")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["cam", "--out", str(tmp_path / "grad"), "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["images"]
    assert len(rows) >= 1
    hits = 0
    for row in rows:
        stem = f"{row['image']}_{{}}_{row['layer']}_{row['target_name']}.npy"
        cam = np.load(tmp_path / "cam" / stem.format("cam"))
        grad = np.load(tmp_path / "grad" / stem.format("gradcam"))
        np.testing.assert_allclose(cam, grad, atol=1e-5)  # GAP head: CAM = Grad-CAM
        hits += row["target"] == row["prediction"]
    assert hits == len(rows)

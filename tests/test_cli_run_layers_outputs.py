"""`netlens run` with images and --data together, and `netlens layers` writing its table into
--out with the run header like every other command."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from netlens.cli.app import app

runner = CliRunner()


def _images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_run_refuses_images_and_data_together(tmp_path: Path) -> None:
    (img,) = _images(tmp_path / "one", 1)
    _images(tmp_path / "data" / "a", 2)
    out = tmp_path / "out"
    args = ["run", "cam", "zoo:shapes-allconv", str(img), "-d", str(tmp_path / "data")]
    res = runner.invoke(app, [*args, "-o", str(out)])
    assert res.exit_code == 1 and "both given" in res.output
    assert "Traceback" not in res.output and not out.exists()


def test_layers_writes_json_with_the_run_header_and_csv(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = runner.invoke(app, ["layers", "zoo:shapes-allconv", "-o", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "layers.json").read_text())
    assert doc["analyzer"] == "layers" and doc["run"]["torch"] and doc["run"]["model"]
    rows = list(csv.DictReader((out / "layers.csv").open()))
    assert [r["name"] for r in rows] == [r["name"] for r in doc["table"]]
    assert "features" in {r["name"] for r in rows}
    printed = runner.invoke(app, ["layers", "zoo:shapes-allconv", "-o", str(out), "--json"])
    assert json.loads(printed.stdout)["layers"] == doc["table"]


def test_distributed_is_offered_only_where_results_combine() -> None:
    for name, offered in (
        ("features", False),
        ("kernels", False),
        ("layers", False),
        ("stats", True),
    ):
        res = runner.invoke(app, [name, "--help"])
        assert res.exit_code == 0 and ("--distributed" in res.output) == offered, name

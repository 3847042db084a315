"""Every analyzer command runs with no arguments on the default zoo model and its samples."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from netlens.cli.app import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("cam", "cam.json"),
        ("kernels", "kernels.json"),
        ("features", "features.json"),
        ("stats", "stats.json"),
        ("top", "top-activations.json"),
        ("ablate", "ablation.json"),
        ("sanity", "sanity.json"),
        ("evaluate", "evaluate.json"),
    ],
)
def test_command_runs_bare(tmp_path, command, expected):
    result = runner.invoke(app, [command, "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / expected).read_text())
    assert summary  # a real summary was written
    assert any(p.suffix == ".png" for p in tmp_path.iterdir())


def test_layers_bare():
    result = runner.invoke(app, ["layers", "--json"])
    assert result.exit_code == 0
    names = [r["name"] for r in json.loads(result.stdout)["layers"]]
    assert "classifier" in names

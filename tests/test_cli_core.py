"""The CLI skeleton: --help speed, --version, layers, plugins, run, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from netlens.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    import timm

    path = tmp_path_factory.mktemp("m") / "resnet.pt"
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=5).state_dict(), path)
    return path


def test_help_is_fast_and_imports_no_torch():
    code = (
        "import sys, time; t = time.perf_counter(); from netlens.cli.app import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NOTORCH', time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    flag, seconds = out.stdout.strip().splitlines()[-1].split()
    assert flag == "NOTORCH"
    assert float(seconds) < 2.0  # generous for a loaded CI machine; measured ~0.2 s


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("netlens ")


def test_layers_table_and_json(resnet_file):
    result = runner.invoke(app, ["layers", str(resnet_file), "--arch", "resnet18", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)["layers"]}
    assert rows["fc"]["output_shape"] == [1, 5]
    assert rows["layer4"]["output_shape"] == [1, 512, 7, 7]
    table = runner.invoke(app, ["layers", str(resnet_file), "--arch", "resnet18"])
    assert table.exit_code == 0 and "layer4.1.conv2" in table.output


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        (["layers", "missing.pt"], "not found"),
        (["layers", "{model}"], "--arch"),
        (["layers", "{model}", "--arch", "resnet81"], "resnet18"),
        (["run", "no-such-analyzer", "{model}", "--arch", "resnet18"], "unknown analyzer"),
    ],
)
def test_errors_are_one_line_exit_1(resnet_file, args, msg):
    args = [a.replace("{model}", str(resnet_file)) for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and msg in lines[0], result.output
    assert "Traceback" not in result.output


def test_plugins_lists_builtin_loaders_and_analyzers():
    result = runner.invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    names = {p["name"] for p in data["plugins"]}
    assert "core" in names
    assert all(p["package"] == "netlens" for p in data["plugins"] if p["name"] == "core")


def test_debug_env_gives_traceback(resnet_file, monkeypatch):
    monkeypatch.setenv("NETLENS_DEBUG", "1")
    result = runner.invoke(app, ["layers", str(resnet_file)])
    assert result.exit_code != 0 and result.exception is not None


def test_timing_budget_sanity():
    t = time.perf_counter()
    runner.invoke(app, ["--help"])
    assert time.perf_counter() - t < 2.0

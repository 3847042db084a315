"""The plugin from the command line, and what happens when it is not installed."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from netlens.cli.app import app

runner = CliRunner()


def test_run_integrated_gradients_from_the_cli(tiny_model_file, sample_images, tmp_path):
    out = tmp_path / "out"
    args = [
        "run",
        "integrated-gradients",
        str(tiny_model_file),
        *map(str, sample_images),
        "--opt",
        "steps=8",
        "--opt",
        "target=square",
        "--out",
        str(out),
        "--json",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["analyzer"] == "integrated-gradients"
    assert summary["classes"] == ["square"] * 3 and summary["options"]["steps"] == 8
    assert len(summary["completeness_delta"]) == 3
    names = {p.name for p in out.iterdir()}
    assert {
        "integrated-gradients.json",
        "integrated-gradients.csv",
        "integrated-gradients-maps.npy",
        "integrated-gradients-sample0.png",
    } <= names


def test_bad_target_is_one_line_and_exit_1(tiny_model_file, sample_images, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(
        app,
        [
            "run",
            "saliency",
            str(tiny_model_file),
            str(sample_images[0]),
            "--opt",
            "target=dog",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 1
    assert "unknown class 'dog'" in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_plugins_lists_package_and_version():
    res = runner.invoke(app, ["plugins", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    mine = [r for r in doc["registered"] if r["package"] == "netlens-captum"]
    assert {r["name"] for r in mine} == {
        "integrated-gradients",
        "saliency",
        "occlusion",
        "guided-backprop",
        "guided-gradcam",
    }
    assert {r["version"] for r in mine} == {md.version("netlens-captum")}


@pytest.fixture
def uninstalled(monkeypatch):
    """netlens as it sees the environment once netlens-captum's distribution is gone."""
    real = md.entry_points

    def without_captum(**kw):
        return [ep for ep in real(**kw) if ep.dist is None or ep.dist.name != "netlens-captum"]

    monkeypatch.setattr(md, "entry_points", without_captum)


def test_uninstalling_removes_the_analyzers(
    uninstalled, plugin_host, tiny_model_file, sample_images, tmp_path
):
    host = plugin_host()
    assert "integrated-gradients" not in host.analyzers and "captum" not in host.plugins
    res = runner.invoke(app, ["plugins", "--json"])
    assert "netlens-captum" not in res.stdout
    res = runner.invoke(
        app,
        [
            "run",
            "integrated-gradients",
            str(tiny_model_file),
            str(sample_images[0]),
            "--out",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 1 and "unknown analyzer 'integrated-gradients'" in res.output


def test_installed_console_script_runs_the_plugin(tiny_model_file, sample_images, tmp_path):
    """The real ``netlens`` executable of this environment finds the installed plugin."""
    exe = Path(sys.executable).with_name("netlens")
    assert exe.exists(), "netlens is not installed in this environment"
    out = tmp_path / "out"
    env = {**os.environ, "NETLENS_DISABLE_PLUGINS": "", "MPLBACKEND": "Agg"}
    done = subprocess.run(
        [
            str(exe),
            "run",
            "integrated-gradients",
            str(tiny_model_file),
            str(sample_images[0]),
            "--opt",
            "steps=4",
            "--out",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["method"] == "Integrated Gradients"
    assert (out / "integrated-gradients-sample0.png").stat().st_size > 5000

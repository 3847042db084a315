"""Hostile CLI options (sweep 8): a single-valued option given twice, `train`'s output folder
(locked and checked before any data is read), --crop refused before the model summary,
evaluate's --masks that is missing or unused, --noise past its bound and metrics that scored
no image."""

from __future__ import annotations

import fcntl
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from netlens.analyzers.evaluate_warnings import unscored_warning
from netlens.cli.app import app
from netlens.cli.common import repeated_option

pytestmark = [pytest.mark.usefixtures("one_thread")]

runner = CliRunner()


def _params(name: str) -> list:
    return typer.main.get_command(app).commands[name].params


def _run(args: list[str]):
    return runner.invoke(app, args, env={"NETLENS_THREADS": "1"})


# -- a single-valued option given twice ---------------------------------------------------
def test_layers_given_twice_is_refused_with_the_comma_separated_form():
    r = _run(["stats", "-n", "2", "--layers", "features.0.0", "--layers", "features.1.0"])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1, r.output
    assert "--layers given twice" in lines[0]
    assert "--layers features.0.0,features.1.0" in lines[0]


@pytest.mark.parametrize(
    ("command", "args", "words"),
    [
        ("cam", ["-t", "1", "-t", "2"], ["--target (-t) given twice", "--target 1,2"]),
        ("cam", ["-m", "gradcam", "-m", "scorecam"], ["--method (-m) given twice", "'scorecam'"]),
        ("cam", ["-o", "a", "--out=b"], ["--out (-o) given twice", "'a', then 'b'"]),
        ("cam", ["-oa", "-qo", "b"], ["--out (-o) given twice"]),
        ("stats", ["-l", "a", "--layers=b"], ["--layer (-l) given twice", "--layer a,b"]),
        ("train", ["--epochs", "1", "--epochs", "2"], ["--epochs given twice"]),
    ],
)
def test_repeated_single_valued_options_are_found_in_every_spelling(command, args, words):
    line = repeated_option(_params(command), args)
    assert line is not None
    for word in words:
        assert word in line


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("run", ["--opt", "a=1", "--opt", "b=2"]),  # meant to repeat
        ("train", ["--arch-opt", "a=1", "--arch-opt", "b=2"]),
        ("cam", ["-q", "-q", "--json", "--json"]),  # on/off flags
        ("cam", ["-t", "-t"]),  # a value that looks like the flag is the value
        ("cam", ["-t", "1", "--", "-t", "2"]),  # after --: arguments
        ("train", ["--flip", "--no-flip", "--seed", "1"]),
    ],
)
def test_options_meant_to_repeat_flags_and_values_are_not_repeats(command, args):
    assert repeated_option(_params(command), args) is None


def test_opt_given_for_different_keys_still_runs():
    r = _run(["run", "kernels", "--opt", "a=1", "--opt", "b=2", "--help"])
    assert r.exit_code == 0, r.output


# -- train: the output folder first --------------------------------------------------------
def test_train_into_a_locked_folder_stops_at_once(tmp_path: Path):
    out = tmp_path / "o"
    out.mkdir()
    with (out / ".netlens.lock").open("a+") as held:  # another run holds the folder
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = _run(["train", "--arch", "lenet5", "-d", str(tmp_path / "nodata"), "-o", str(out)])
    assert r.exit_code == 1
    assert "another netlens run is writing to" in r.output, r.output  # not the data's error
    assert r.output.count("\n") == 1


@pytest.mark.parametrize("kind", ["file", "under-file", "dev-null"])
def test_train_out_that_is_not_a_folder_is_one_line_before_the_data(tmp_path: Path, kind):
    f = tmp_path / "afile"
    f.write_text("")
    out = {"file": f, "under-file": f / "sub", "dev-null": Path("/dev/null")}[kind]
    r = _run(["train", "--arch", "lenet5", "-d", str(tmp_path / "nodata"), "-o", str(out)])
    assert r.exit_code == 1
    shown = f if kind != "dev-null" else out
    assert f"{shown} is a file, not a folder" in r.output, r.output
    assert r.output.count("\n") == 1


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            cv2.imwrite(str(root / cls / f"{i}.png"), img)
    return root


def test_train_crop_past_the_image_is_refused_before_the_model_summary(tmp_path: Path):
    data = _folder(tmp_path / "data")
    args = ["train", "--arch", "lenet5", "-d", str(data), "--img-size", "32", "--epochs", "1"]
    r = _run([*args, "--crop", "40", "-o", str(tmp_path / "o"), "--workers", "0"])
    assert r.exit_code == 1
    assert "--crop 40 shifts 32×32 images out of sight; use under 32" in r.output, r.output
    assert "parameters:" not in r.output
    assert not (tmp_path / "o").exists()  # a refused run leaves no folder


# -- evaluate: --masks and --noise -----------------------------------------------------------
def test_evaluate_masks_that_do_not_exist_are_refused(tmp_path: Path):
    missing = tmp_path / "nonexistent" / "masks"
    r = _run(["evaluate", "-n", "2", "--metric", "pointing", "--masks", str(missing)])
    assert r.exit_code == 1
    assert r.output.strip() == f"error: mask folder not found: {missing}"


def test_evaluate_masks_a_named_dataset_does_not_use_are_a_warning(tmp_path: Path):
    masks = tmp_path / "masks"
    masks.mkdir()
    args = ["evaluate", "-n", "2", "--metric", "pointing", "-d", "shapes", "-q"]
    r = _run([*args, "--masks", str(masks), "-o", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 0, r.output
    assert f"warning: --masks {masks} is not used" in r.output


@pytest.mark.parametrize("noise", ["1e308", "101"])
def test_evaluate_noise_past_its_bound_is_refused(tmp_path: Path, noise):
    r = _run(["evaluate", "-n", "2", "--metric", "road-morf", "--noise", noise])
    assert r.exit_code == 1
    assert "--noise must be at most 100" in r.output, r.output


def test_a_metric_that_scored_no_image_gets_a_warning():
    rows = [
        {"method": "gradcam", "metric": "road-morf", "n": 0},
        {"method": "gradcam", "metric": "deletion", "n": 2},
        {"method": "gradcam", "metric": "road-lerf", "n": 0},
    ]
    (line,) = unscored_warning(rows, 2)
    assert "no score for any of the 2 image(s) in gradcam road-morf and gradcam road-lerf" in line
    assert unscored_warning(rows[1:2], 2) == []
    assert unscored_warning(rows, 0) == []


def test_help_wins_over_a_repeated_option():
    r = _run(["stats", "--layers", "a", "--layers", "b", "--help"])
    assert r.exit_code == 0 and "Usage" in r.output, r.output

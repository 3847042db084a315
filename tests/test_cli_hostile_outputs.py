"""Hostile output folders and devices: netlens' own outputs are never read back as photos, a
commit lands whole or not at all, and a device netlens cannot run on is one line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

import netlens.output as output
from netlens.cli.app import app
from netlens.errors import ImageError, NetlensError
from netlens.images import list_images, load_batch
from netlens.output import OutputSet

pytestmark = [pytest.mark.usefixtures("one_thread")]

runner = CliRunner()
SAMPLES = Path(__file__).parents[1] / "src/netlens/zoo/shapes-allconv/samples"


def _png(seed: int) -> bytes:
    img = np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    return cv2.imencode(".png", img)[1].tobytes()


def _photos(folder: Path, names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / name).write_bytes(_png(i))
    return [folder / n for n in names]


def _snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every visible entry under ``folder``: a file's bytes, or "dir"."""
    out: dict[str, bytes | str] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if not any(part.startswith(".") for part in p.relative_to(folder).parts):
            out[rel] = "dir" if p.is_dir() else p.read_bytes()
    return out


# -- 1. netlens' outputs are not inputs ------------------------------------------------------
def test_list_images_leaves_out_netlens_outputs_and_keeps_photos_beside_them(tmp_path):
    photos = _photos(tmp_path, ["a.png", "b.jpg", "c.png"])
    with OutputSet(tmp_path / "netlens-out", "cam") as files:  # `netlens cam .` run before
        files.write_bytes("a_cam.png", _png(10))
        files.write_bytes("a_figure.png", _png(11))
    with OutputSet(tmp_path, "features") as files:  # `-o .`: outputs beside the photos
        files.write_bytes("a_features.png", _png(12))
    mine = _photos(tmp_path / "netlens-out", ["mine.png"])  # a photo no manifest lists
    (tmp_path / "c.png").write_bytes(_png(3))
    expected = sorted([*photos, *mine])
    assert list_images(tmp_path) == expected
    assert load_batch(tmp_path, _identity()).sources == [str(p) for p in expected]


def test_a_listed_name_whose_file_was_replaced_is_a_photo_again(tmp_path):
    with OutputSet(tmp_path, "cam") as files:
        files.write_bytes("x.png", _png(1))
    (tmp_path / "x.png").write_bytes(_png(1) + b"\0" * 7)  # not the size netlens wrote
    assert list_images(tmp_path) == [tmp_path / "x.png"]


def test_a_foreign_manifest_lists_nothing(tmp_path):
    _photos(tmp_path, ["x.png"])
    size = (tmp_path / "x.png").stat().st_size
    doc = {"result": "other", "files": [{"file": "x.png", "bytes": size}]}
    (tmp_path / "cam.manifest.json").write_text(json.dumps(doc))  # result is not "cam"
    (tmp_path / "bad.manifest.json").write_text("{not json")
    assert list_images(tmp_path) == [tmp_path / "x.png"]


def test_a_folder_of_only_netlens_outputs_says_so(tmp_path):
    with OutputSet(tmp_path / "out", "cam") as files:
        files.write_bytes("a_cam.png", _png(1))
    with pytest.raises(ImageError) as err:
        load_batch(tmp_path / "out", _identity())
    text = str(err.value)
    assert "netlens' own outputs" in text and "a_cam.png" in text and "\n" not in text


def test_cli_second_run_into_the_input_folder_reads_only_the_photos(tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    shutil.copytree(SAMPLES, folder, ignore=shutil.ignore_patterns("masks"))
    photos = sorted(str(p) for p in folder.glob("*.png"))
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        res = runner.invoke(app, ["cam", "photos", "-o", "photos", "-q", "--json"])
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        assert sorted(doc["sources"]) == sorted(os.path.relpath(p, tmp_path) for p in photos)
    listed = json.loads((folder / "cam.manifest.json").read_text())["files"]
    assert all((folder / f["file"]).is_file() for f in listed)  # none removed as "stale"
    res = runner.invoke(app, ["cam", ".", "-q", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert all("netlens-out" not in s for s in json.loads(res.stdout)["sources"])


def _identity():  # noqa: ANN202
    from netlens.images import Preprocess

    return Preprocess(size=(32, 32), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


# -- 2. a commit lands whole or not at all ----------------------------------------------------
def _earlier_run(folder: Path) -> None:
    with OutputSet(folder, "cam") as files:
        files.write_bytes("a.png", _png(1))
        files.write_bytes("old.png", _png(2))  # this run does not rewrite it: stale
        files.write_text("cam.json", "{}")


def test_a_folder_in_the_way_is_named_before_anything_moves(tmp_path):
    _earlier_run(tmp_path)
    (tmp_path / "cam.json").unlink()
    (tmp_path / "cam.json").mkdir()
    before = _snapshot(tmp_path)
    with pytest.raises(NetlensError) as err, OutputSet(tmp_path, "cam") as files:
        files.write_bytes("a.png", _png(5))
        files.write_text("cam.json", "{}")
    text = str(err.value)
    assert str(tmp_path / "cam.json") in text and "staging" not in text, text
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failure_during_the_renames_puts_the_earlier_run_back(tmp_path, monkeypatch, exc):
    _earlier_run(tmp_path)
    before = _snapshot(tmp_path)
    real, calls = os.replace, []

    def replace(src, dst):  # noqa: ANN001, ANN202
        calls.append(dst)
        if Path(dst).name == "b.png":  # the second new file: a.png is already in place
            raise exc
        return real(src, dst)

    monkeypatch.setattr(output.os, "replace", replace)
    with pytest.raises(type(exc)), OutputSet(tmp_path, "cam") as files:
        files.write_bytes("a.png", _png(5))
        files.write_bytes("b.png", _png(6))
        files.write_text("cam.json", "{}")
    assert any(Path(d) == tmp_path / "a.png" for d in calls)  # it failed part way
    assert _snapshot(tmp_path) == before
    monkeypatch.setattr(output.os, "replace", real)
    with pytest.warns(UserWarning, match="2 files"), OutputSet(tmp_path, "cam") as files:
        files.write_bytes("a.png", _png(5))  # and a run after it commits as ever
    assert (tmp_path / "a.png").read_bytes() == _png(5) and not (tmp_path / "old.png").exists()


# -- 8. devices netlens cannot run on ---------------------------------------------------------
@pytest.mark.parametrize("device", ["meta", "xla", "hpu"])
def test_unsupported_device_is_one_line(tmp_path, device):
    res = runner.invoke(app, ["kernels", "--device", device, "-o", str(tmp_path / "o")])
    assert res.exit_code == 1, res.output
    text = res.output.strip()
    assert len(text.splitlines()) == 1 and "RuntimeError" not in text, text
    assert f"'{device}'" in text and "cpu, cuda, mps" in text, text
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("device", ["meta", "xla"])
def test_train_on_an_unsupported_device_is_one_line(tmp_path, device):
    args = ["train", "--arch", "lenet5", "-d", "shapes", "--epochs", "1", "--device", device]
    res = runner.invoke(app, [*args, "-o", str(tmp_path / "o")])
    assert res.exit_code == 1, res.output
    text = res.output.strip()
    assert len(text.splitlines()) == 1 and f"'{device}'" in text and "cpu, cuda, mps" in text

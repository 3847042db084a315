"""Odd file names on the input side: non-UTF-8 bytes, spaces, unicode, leading dashes, newlines,
very long names, markup-like brackets (issue 14, item 5)."""

from __future__ import annotations

import json
import os
import random

import pytest
from hostile_inputs import ODD_NAMES, assert_one_clean_line, encode, write_bytes_name
from typer.testing import CliRunner

from netlens.cli.app import app
from netlens.errors import ImageError
from netlens.images import Preprocess, load_batch, read_image
from netlens.naming import MAX_NAME_BYTES, display_path, safe_component, safe_stem

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("NETLENS_DEBUG", raising=False)


def is_safe(name: str) -> bool:
    raw = name.encode("utf-8")  # raises on surrogates
    return (
        name.isprintable()
        and 0 < len(raw) <= MAX_NAME_BYTES
        and not any(c in name for c in '<>:"/\\|?*')
        and name[0] not in "-."
        and name[-1] not in " ."
    )


@pytest.mark.parametrize("raw", ODD_NAMES, ids=lambda r: r.decode("utf-8", "replace")[:20])
def test_odd_names_read_and_get_safe_stems(raw, tmp_path):
    path = write_bytes_name(tmp_path, raw, encode(".png"))
    assert read_image(path).shape == (40, 56, 3)
    assert is_safe(safe_stem(path))
    assert "\n" not in display_path(path) and display_path(path).isprintable()


def test_normal_names_are_unchanged():
    for name in ("cat", "IMG_0001", "tabby cat", "café", "猫の写真", "a.b.c", "x-ray"):
        assert safe_component(name) == name


def test_safe_names_never_collide_for_different_stems():
    rng = random.Random(0)
    alphabet = [b"a", b"-", b".", b"/", b"\xff", b"\xfe", b" ", b"\n", "é".encode(), b"_"]
    stems = {
        os.fsdecode(b"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))))
        for _ in range(3000)
    }
    stems |= {os.fsdecode(b"x" * n) for n in range(80, 300, 7)}
    stems.discard("")
    safe = {safe_component(s) for s in stems}
    assert len(safe) == len(stems)
    assert all(is_safe(s) for s in safe)
    assert safe_component("a/b") == safe_component("a/b")  # deterministic


VISIBLE = [n for n in ODD_NAMES if not n.startswith(b".")]


def test_batch_names_are_safe_and_unique(tmp_path):
    for raw in ODD_NAMES:
        write_bytes_name(tmp_path, raw, encode(".png"))
    write_bytes_name(tmp_path, b"with space.jpg", encode(".jpg"))  # same stem, other suffix
    batch = load_batch(tmp_path, Preprocess(size=(16, 16)))
    assert len(batch) == len(VISIBLE) + 1 and not batch.errors  # a folder walk skips dot files
    assert len(set(batch.names)) == len(batch.names)
    assert all(n.isprintable() and "/" not in n for n in batch.names)
    assert "with space" in batch.names and "with space_2" in batch.names


def test_cam_on_odd_names_finishes_with_safe_outputs(tmp_path):
    """Issue 14: a non-UTF-8 name crashed cam half way (one file written, no cam.json)."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for raw in ODD_NAMES:
        write_bytes_name(imgs, raw, encode(".png"))
    out = tmp_path / "out"
    res = runner.invoke(app, ["cam", str(imgs), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "cam.json").read_text())
    assert len(summary["images"]) == len(VISIBLE)
    for f in out.iterdir():
        assert f.name.isprintable() and len(f.name.encode()) <= 255, f.name


def test_a_leading_dash_file_after_double_dash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_bytes_name(tmp_path, b"-x.png", encode(".png"))
    res = runner.invoke(app, ["cam", "--out", "out", "--quiet", "--", "-x.png"])
    assert res.exit_code == 0, res.output
    stem = safe_stem("-x.png")
    assert stem.startswith("_x_")
    assert any(f.name.startswith(stem) and f.suffix == ".png" for f in (tmp_path / "out").iterdir())


@pytest.mark.parametrize("name", ["[/draft] cat.png", "[bold]x[/bold].png", "a\nb.png"])
def test_error_lines_show_odd_names_verbatim(name, tmp_path):
    """Brackets are rich markup: unescaped, they vanish or crash the error line itself."""
    res = runner.invoke(app, ["cam", str(tmp_path / name), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1
    line = assert_one_clean_line(res.stderr)
    assert display_path(name) in line or name in line


def test_unreadable_file_is_one_line(tmp_path):
    path = tmp_path / "locked.png"
    path.write_bytes(encode(".png"))
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anyway
        pytest.skip("running as root")
    with pytest.raises(ImageError, match="permission") as err:
        read_image(path)
    assert_one_clean_line(str(err.value))


@pytest.mark.parametrize("below", ["", "sub"])
def test_an_out_path_that_is_a_file_says_so(below, tmp_path):
    """``--out results.csv`` (a file): the line was the OS's "File exists: ... (check the path
    and the disk)", which reads as if an existing folder were the trouble."""
    taken = tmp_path / "results.csv"
    taken.write_text("a,b\n")
    out = taken / below if below else taken
    res = runner.invoke(app, ["kernels", "zoo:shapes-allconv", "--out", str(out)])
    assert res.exit_code == 1
    line = assert_one_clean_line(res.output)
    assert "results.csv is a file, not a folder" in line and "--out" in line
    assert taken.read_text() == "a,b\n"


def test_cam_rows_name_each_images_source_file(tmp_path) -> None:
    """Two folders' ``x.png`` became ``x`` and ``x_2``, and nothing said which was which."""
    import netlens

    paths = []
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        paths.append(tmp_path / sub / "x.png")
        paths[-1].write_bytes(encode(".png"))
    write_bytes_name(tmp_path / "a", b"odd\xff.png", encode(".png"))
    rows = netlens.load().cam([*paths, tmp_path / "a" / os.fsdecode(b"odd\xff.png")]).rows()
    assert [(r["image"], r["source"]) for r in rows[:2]] == [
        ("x", str(paths[0])),
        ("x_2", str(paths[1])),
    ]
    assert rows[2]["source"].endswith("odd\\xff.png")  # printable, as every path shown

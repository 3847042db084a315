"""Messy image files read as the models' own loaders read them (sweep 5): GIF transparency and
APNG default images as Pillow decodes them, float/32-bit TIFFs by the in-memory rule, an
unreadable first file with a model of unknown input size, dangling links, huge photos in
figures, CSV messages that name the file's line."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import netlens
from netlens.analyzers.unlabelled import ImageFiles
from netlens.cli.app import app
from netlens.data.csvlist import CsvListDataset
from netlens.data.resolve import ImageFolderDataset
from netlens.errors import DataError, ImageError
from netlens.images import Preprocess, as_pixels, list_images, read_image
from netlens.render.cam_display import THUMB, cam_grid_figure, shrunk
from netlens.render.cam_figure import MAX_SIDE

UNSIZED = Preprocess(size=None)


def test_gif_transparent_colour_reads_as_pillow_converts_it(tmp_path: Path) -> None:
    """OpenCV put the background colour (white) under transparent pixels; Pillow's
    ``convert("RGB")`` (ImageFolder, timm, HF) keeps the transparent index's colour (black)."""
    idx = np.full((40, 48), 1, np.uint8)
    idx[10:30, 12:36] = 2
    im = Image.fromarray(idx, "P")
    im.putpalette([255, 255, 255, 0, 0, 0, 200, 0, 0] + [0] * (253 * 3))
    path = tmp_path / "sticker.gif"
    im.save(path, transparency=1, background=0, optimize=False)
    pil = np.asarray(Image.open(path).convert("RGB"))
    got = read_image(path)
    np.testing.assert_array_equal(got, pil)
    assert tuple(got[0, 0]) == (0, 0, 0) and tuple(got[20, 20]) == (200, 0, 0)
    np.testing.assert_array_equal(got, as_pixels(Image.open(path)))  # the in-memory path


def test_apng_default_image_is_read_as_pillow_reads_it(tmp_path: Path) -> None:
    """An APNG whose default image is not part of the animation: Pillow reads the default
    image, OpenCV read the first animation frame."""
    frames = [Image.new("RGB", (32, 24), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "anim.png"
    frames[0].save(path, save_all=True, append_images=frames[1:], default_image=True)
    assert tuple(np.asarray(Image.open(path).convert("RGB"))[0, 0]) == (255, 0, 0)
    got = read_image(path)
    assert got.shape == (24, 32, 3) and tuple(got[5, 5]) == (255, 0, 0)
    plain = tmp_path / "still.png"  # an animation of one default image, and a still PNG: as before
    frames[1].save(plain)
    assert tuple(read_image(plain)[0, 0]) == (0, 255, 0)


def test_float_and_int32_tiffs_read_as_the_same_array_in_memory(tmp_path: Path) -> None:
    """Each file's own min..max was stretched to 0..255; the same array given in memory is read
    as value × 255 ([0, 1] floats) or as it is (0..255): one rule for both now."""
    gray = np.linspace(0, 1, 30 * 40, dtype=np.float32).reshape(30, 40)
    dim = 0.1 + 0.4 * gray  # an under-exposed photo in [0, 1]
    counts = (25 + 127 * gray).astype(np.int32)  # 25..152 in a 32-bit TIFF
    for name, arr in (("dim.tif", dim), ("counts.tif", counts)):
        Image.fromarray(arr).save(tmp_path / name)
        got = read_image(tmp_path / name)
        np.testing.assert_array_equal(got, as_pixels(arr))
        np.testing.assert_array_equal(got, as_pixels(Image.open(tmp_path / name)))
    assert read_image(tmp_path / "dim.tif").max() == 128  # 0.5 × 255, not stretched to 255
    raw = (gray * 4000).astype(np.int32)  # raw sensor counts: refused, as in memory
    Image.fromarray(raw).save(tmp_path / "raw.tif")
    with pytest.raises(ImageError, match=r"raw\.tif's values run from 0 to 4000"):
        read_image(tmp_path / "raw.tif")
    with pytest.raises(ImageError, match="values run from 0 to 4000"):
        as_pixels(raw)


def _folder_with_empty_first_file(root: Path) -> Path:
    for cls, colour in (("cat", 60), ("dog", 180)):
        (root / cls).mkdir(parents=True)
        for i in (1, 2):
            cv2.imwrite(str(root / cls / f"{i:03d}.png"), np.full((30, 40, 3), colour, np.uint8))
    (root / "cat" / "000.jpg").write_bytes(b"")  # sorts first, reads never
    rows = ["path,label", "cat/000.jpg,cat", "cat/001.png,cat", "dog/001.png,dog"]
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("kind", ["folder", "csv", "files"])
def test_an_unreadable_first_file_does_not_stop_a_model_of_unknown_size(
    tmp_path: Path, kind: str
) -> None:
    """A model without a recorded input size takes the first image's: the first file that
    reads, not the first file listed (which stopped the whole run in one line, --skip-bad or
    not). The unreadable one is still skipped and reported when it is drawn."""
    root = _folder_with_empty_first_file(tmp_path / "data")
    if kind == "folder":
        ds = ImageFolderDataset(root, UNSIZED)
    elif kind == "csv":
        ds = CsvListDataset(root / "list.csv", UNSIZED)
    else:
        ds = ImageFiles(list_images(root / "cat"), UNSIZED)
    assert ds.preprocess.size == (30, 40)
    with pytest.raises(ImageError, match="000.jpg"):
        ds[0]
    assert ds[1][0].shape == (3, 30, 40)
    (root / "cat" / "001.png").write_bytes(b"not a png")
    (root / "cat" / "002.png").write_bytes(b"")
    with pytest.raises(ImageError, match="000.jpg"):  # none reads: the first one's error
        ImageFiles(list_images(root / "cat"), UNSIZED)


@pytest.mark.parametrize("command", [["stats"], ["top", "-l", "0.1"]])
def test_an_unreadable_first_file_of_an_unsized_model_is_skipped(
    tmp_path: Path, command: list[str]
) -> None:
    root = _folder_with_empty_first_file(tmp_path / "data")
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    torch.save(nn.Sequential(net, nn.Linear(4, 2)).eval(), tmp_path / "seq.pt")
    args = [command[0], str(tmp_path / "seq.pt"), *command[1:], "--trust", "--classes", "cat,dog"]
    for data in (root, root / "list.csv"):
        out = ["-d", str(data), "--out", str(tmp_path / "o"), "--quiet"]
        res = CliRunner().invoke(app, [*args, *out])
        assert res.exit_code == 3, res.output
        assert "000.jpg" in res.output


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_a_dangling_link_is_listed_and_named_as_unreadable(tmp_path: Path) -> None:
    """A broken link named as an image was dropped without a word; ImageFolder lists it."""
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "b.jpg").symlink_to(tmp_path / "moved" / "b.jpg")
    assert list_images(tmp_path) == [tmp_path / "a.png", tmp_path / "b.jpg"]
    with pytest.raises(ImageError, match=r"b\.jpg is a link to .*moved/b\.jpg, which does not"):
        read_image(tmp_path / "b.jpg")
    batch = netlens.images.load_batch(tmp_path, Preprocess(size=8))
    assert len(batch) == 1 and len(batch.errors) == 1 and "b.jpg" in batch.errors[0]


def test_a_huge_photo_is_drawn_shrunk_with_its_map_in_place(tmp_path: Path) -> None:
    """``figure`` drew the full-size photo and overlays (48 MP: a minute, +2.4 GB): now both
    are shrunk to MAX_SIDE, the map over the very part of the photo the model saw."""
    rng = np.random.default_rng(0)
    photo = cv2.resize(rng.integers(0, 255, (30, 45, 3), dtype=np.uint8), (2700, 1800))
    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), photo)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = nn.Sequential(net, nn.Linear(4, 2)).eval()
    lens = netlens.load(model, size=32, mean=(0.5,) * 3, std=(0.5,) * 3, classes=["a", "b"])
    res = lens.cam(path)
    image, over = (np.asarray(ax.images[0].get_array()) for ax in res.figure(0).axes[:2])
    # 1800 × 1024 / 2700 = 682.7, from the 2048-px copy the result keeps: 1365 × 1024 / 2048
    assert image.shape == over.shape and image.shape[1:] == (MAX_SIDE, 3)
    assert image.shape[0] in (682, 683)
    np.testing.assert_array_equal(image, shrunk(res.original(0), MAX_SIDE))
    full = res.overlay(0, 0).astype(np.float32)  # drawn full size, then shrunk: the same picture
    diff = np.abs(shrunk(full, MAX_SIDE) - over)
    assert diff.mean() < 1 and np.percentile(diff, 99) < 4
    grid = cam_grid_figure(res, [0])  # the notebook's plain-PNG view: as small as its cards
    assert [max(ax.images[0].get_array().shape) for ax in grid.axes[:2]] == [THUMB, THUMB]


def test_csv_messages_name_the_files_line(tmp_path: Path) -> None:
    """The message counted data rows after the header (and skipped blank lines): 'row 2' for
    a short row on line 4 pointed the user at a good row."""
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "l.csv").write_text("path,label\na.png,cat\n\na.png\n")
    with pytest.raises(DataError, match=r"l\.csv: line 4 is not 'path,label'"):
        CsvListDataset(tmp_path / "l.csv", Preprocess(size=8), classes=["cat", "dog"])
    (tmp_path / "q.csv").write_text('path,label\n"a\n.png",cat\na.png\n')  # a cell of two lines
    with pytest.raises(DataError, match="line 4 is not"):
        CsvListDataset(tmp_path / "q.csv", Preprocess(size=8), classes=["cat", "dog"])
    (tmp_path / "m.csv").write_text("image,rust,scab\n\na.png,1,0\n\na.png,1,1\n")
    with pytest.raises(DataError, match=r"\(rust, scab\) in row 5"):
        CsvListDataset(tmp_path / "m.csv", Preprocess(size=8), classes=["rust", "scab"])

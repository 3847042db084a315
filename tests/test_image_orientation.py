"""Photos with an EXIF orientation (every portrait phone photo) are read upright.

Decoding with ``cv2.IMREAD_UNCHANGED`` ignores the tag: the model saw the photo on its side and
the heat map was drawn on a sideways picture. The reference here is Pillow's
``ImageOps.exif_transpose``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import data as photos
from typer.testing import CliRunner

import netlens
from netlens.cli.app import app
from netlens.image_orientation import exif_orientation, orient
from netlens.images import read_image

runner = CliRunner()
SAVE = {"JPEG": {"quality": 100}, "PNG": {}, "WEBP": {"lossless": True}, "TIFF": {}}


def encoded(pixels: np.ndarray, fmt: str, orientation: int | None) -> bytes:
    im = Image.fromarray(pixels)
    exif = im.getexif()
    if orientation is not None:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, fmt, exif=exif.tobytes(), **SAVE[fmt])
    return buf.getvalue()


@pytest.mark.parametrize("fmt", list(SAVE))
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_reads_as_pillow_turns_it(
    tmp_path: Path, fmt: str, orientation: int
) -> None:
    pixels = np.random.default_rng(orientation).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    raw = encoded(pixels, fmt, orientation)
    path = tmp_path / f"img.{fmt.lower()}"
    path.write_bytes(raw)
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(raw))).convert("RGB"))
    got = read_image(path)
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want).max() <= (2 if fmt == "JPEG" else 0)
    if fmt != "TIFF":  # libtiff turns TIFFs itself
        assert exif_orientation(raw) == orientation


def test_orient_matches_numpy_turns() -> None:
    a = np.arange(12).reshape(3, 4)
    assert orient(a, 1) is a
    np.testing.assert_array_equal(orient(a, 3), np.rot90(a, 2))
    np.testing.assert_array_equal(orient(a, 6), np.rot90(a, -1))
    np.testing.assert_array_equal(orient(a, 8), np.rot90(a, 1))
    np.testing.assert_array_equal(orient(a, 5), a.T)
    assert orient(a, 7).flags.c_contiguous


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00MM\x00*\x00\x00\x00\xff",  # IFD past the end
        b"\xff\xd8\xff\xe1\xff\xffExif\x00\x00",  # segment longer than the file
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x04eXIfjunk\x00\x00\x00\x00",
        b"RIFF\x10\x00\x00\x00WEBPEXIF\xff\xff\xff\x7f",
        b"\xff\xd8",
        b"",
    ],
)
def test_a_broken_or_missing_exif_block_means_as_stored(raw: bytes) -> None:
    assert exif_orientation(raw) == 1


def test_a_portrait_phone_photo_is_explained_upright(tmp_path: Path) -> None:
    """A real photo stored sideways with Orientation 6 reads, and is explained, as the upright
    photo saved without the tag."""
    upright = photos.astronaut()[:, 64:448]  # 512×384: portrait
    sideways = np.ascontiguousarray(np.rot90(upright, 1))  # as the sensor stored it
    (tmp_path / "phone.jpg").write_bytes(encoded(sideways, "JPEG", 6))
    (tmp_path / "plain.jpg").write_bytes(encoded(upright, "JPEG", None))
    a, b = read_image(tmp_path / "phone.jpg"), read_image(tmp_path / "plain.jpg")
    assert a.shape == b.shape == (512, 384, 3)
    assert np.abs(a.astype(int) - b).mean() < 1.0
    lens = netlens.load()
    got = lens.cam(str(tmp_path / "phone.jpg")).heatmaps
    ref = lens.cam(str(tmp_path / "plain.jpg")).heatmaps
    assert got.shape == ref.shape
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.99
    out = tmp_path / "o"
    done = runner.invoke(app, ["cam", str(tmp_path / "phone.jpg"), "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert len(json.loads((out / "cam.json").read_text())["images"]) == 1


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_avif_orientation_is_read_from_its_container(tmp_path: Path, orientation: int) -> None:
    """OpenCV's AVIF decoder turns nothing, whatever the flags."""
    from PIL import features

    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF support")
    pixels = np.zeros((30, 50, 3), np.uint8)
    pixels[:, :25, 0] = 255  # left half red
    pixels[:8, :, 1] = 255  # top rows green
    raw = io.BytesIO()
    im = Image.fromarray(pixels)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(raw, "AVIF", exif=exif.tobytes(), quality=100)
    (tmp_path / "img.avif").write_bytes(raw.getvalue())
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(raw.getvalue()))))
    got = read_image(tmp_path / "img.avif")
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want[..., :3]).mean() < 8  # lossy

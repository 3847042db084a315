"""Hostile images: pixel bombs in every format refused from the header, broken files in one
line, native decoder chatter kept off stderr, bounded peak memory (issue 14, items 2 and 5)."""

from __future__ import annotations

import io
import sys

import cv2
import numpy as np
import pytest
import torch
from hostile_inputs import (
    BOMB_FORMATS,
    BROKEN_IMAGES,
    assert_one_clean_line,
    encode,
    header_bomb,
    jpeg_bomb,
    netlens_cli,
    png_bomb,
    run_measured,
    small_image,
)
from typer.testing import CliRunner

import netlens
from netlens.cli.app import app
from netlens.cli.common import split_model_and_images
from netlens.errors import ImageError
from netlens.image_header import image_size
from netlens.images import (
    IMAGE_SUFFIXES,
    MAX_PIXELS_ENV,
    as_pixels,
    pixel_limit,
    read_image,
    to_channels,
)
from netlens.testing import TinyCNN, assert_model_unchanged

runner = CliRunner()
GRAY = (".pgm", ".pbm")


def small(ext: str) -> bytes:
    img = small_image()
    return encode(ext, img[:, :, 0] if ext in GRAY else img)


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if anything reaches OpenCV's decoder."""

    def refuse(*args, **kwargs):
        raise AssertionError("cv2.imdecode was called")

    monkeypatch.setattr(cv2, "imdecode", refuse)


@pytest.mark.parametrize("ext", BOMB_FORMATS + GRAY)
def test_every_format_reads_and_its_header_gives_the_size(ext, tmp_path):
    data = small(ext)
    assert image_size(io.BytesIO(data)) == (56, 40)
    path = tmp_path / f"x{ext}"
    path.write_bytes(data)
    img = read_image(path)
    assert img.shape[:2] == (40, 56) and img.dtype == np.uint8
    ref = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if ref.dtype == np.uint8 and ref.ndim == 3:
        np.testing.assert_array_equal(img, ref[:, :, ::-1])


def test_every_suffix_netlens_lists_is_a_format_it_reads():
    readers = {".jpe", ".jfif", ".dib", ".tiff", ".jpeg", ".pnm", ".pxm", ".ras", ".pic", ".tif"}
    assert set(IMAGE_SUFFIXES) <= set(BOMB_FORMATS) | set(GRAY) | readers
    assert ".gif" in IMAGE_SUFFIXES


@pytest.mark.parametrize("ext", BOMB_FORMATS)
def test_pixel_bombs_are_refused_from_the_header(ext, tmp_path, no_decoding):
    path = tmp_path / f"bomb{ext}"
    path.write_bytes(header_bomb(ext))
    with pytest.raises(ImageError, match="over the limit of 100 MP") as err:
        read_image(path)
    assert_one_clean_line(str(err.value))


@pytest.mark.parametrize("ext", BOMB_FORMATS + GRAY)
def test_a_small_limit_refuses_a_real_image_of_every_format(ext, tmp_path, no_decoding):
    path = tmp_path / f"x{ext}"
    path.write_bytes(small(ext))
    with pytest.raises(ImageError, match=r"56×40 pixels .* over the limit"):
        read_image(path, max_pixels=56 * 40 - 1)


def test_the_limit_comes_from_the_argument_then_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "x.png"
    path.write_bytes(small(".png"))
    assert pixel_limit() == 100_000_000
    monkeypatch.setenv(MAX_PIXELS_ENV, "2000")
    with pytest.raises(
        ImageError, match=r"\(0.00224 MP\), over the limit of 0.002 MP \(2,000 pixels"
    ):
        read_image(path)
    assert read_image(path, max_pixels=56 * 40).shape == (40, 56, 3)
    for raw, value in (("250M", 250_000_000), ("2.5e8", 250_000_000), ("1G", 10**9)):
        monkeypatch.setenv(MAX_PIXELS_ENV, raw)
        assert pixel_limit() == value
    for raw in ("abc", "-5", "nan", "0"):
        monkeypatch.setenv(MAX_PIXELS_ENV, raw)
        with pytest.raises(ImageError, match=MAX_PIXELS_ENV) as err:
            pixel_limit()
        assert_one_clean_line(str(err.value))
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ImageError, match="max_pixels"):
            pixel_limit(bad)


def test_a_real_png_bomb_is_refused_and_a_raised_limit_reads_it(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb(4000, 3000))  # a real, valid 12 MP image of ~60 KB
    with pytest.raises(ImageError, match="4000×3000"):
        read_image(path, max_pixels=10_000_000)
    img = read_image(path, max_pixels=12_000_000)
    assert img.shape == (3000, 4000, 3) and not img.any()


@pytest.mark.parametrize("name", sorted(BROKEN_IMAGES))
def test_broken_images_are_one_line_and_silent(name, tmp_path, capfd):
    path = tmp_path / name
    path.write_bytes(BROKEN_IMAGES[name]())
    if name == "bad-crc-text.png":  # libpng complains on fd 2 but reads it
        assert read_image(path).shape == (40, 56, 3)
    else:
        with pytest.raises(ImageError) as err:
            read_image(path)
        assert name in assert_one_clean_line(str(err.value))
    assert capfd.readouterr().err == ""  # libpng/libtiff/OpenCV said nothing on fd 2


def test_wrong_extensions_still_read(tmp_path):
    for real, named in ((".png", ".jpg"), (".jpg", ".png"), (".webp", ".tif"), (".gif", ".bmp")):
        path = tmp_path / f"x{named}"
        path.write_bytes(small(real))
        assert read_image(path).shape == (40, 56, 3)


def test_animated_gif_gives_its_first_frame_and_is_never_a_model(tmp_path):
    from PIL import Image

    frames = [Image.new("RGB", (32, 24), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    first = read_image(path)
    assert first.shape == (24, 32, 3) and tuple(first[5, 5]) == (255, 0, 0)
    assert split_model_and_images(str(path), []) == (None, [str(path)])


def test_gif_frame_beyond_its_screen_counts(tmp_path):
    """Pillow grows the canvas to the first frame; the larger of screen and frame is checked."""
    import struct

    gif = bytearray(small(".gif"))
    pos = gif.index(b"\x2c", 13)  # the first image descriptor
    gif[pos + 5 : pos + 9] = struct.pack("<HH", 20000, 20000)
    assert image_size(io.BytesIO(bytes(gif))) == (20000, 20000)


def test_a_bomb_changes_no_model_and_writes_nothing(tmp_path):
    model = TinyCNN().eval()
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb())
    with assert_model_unchanged(model), pytest.raises(ImageError, match="over the limit"):
        netlens.cam(model, bomb)
    out = tmp_path / "out"
    res = runner.invoke(app, ["cam", str(bomb), "--out", str(out)])
    assert res.exit_code == 1 and "20000×20000" in assert_one_clean_line(res.stderr)
    assert not out.exists()


def test_png_and_jpeg_bombs_stay_under_1gb_through_the_cli(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_bomb())  # valid: 1.2 GB of pixels when decoded
    (tmp_path / "bomb.jpg").write_bytes(jpeg_bomb())  # libjpeg would decode 400 MP of grey
    out = tmp_path / "out"
    files = [str(tmp_path / "bomb.png"), str(tmp_path / "bomb.jpg")]
    res = run_measured([*netlens_cli(), "cam", *files, "--out", str(out)])
    assert res["rc"] == 1
    assert "over the limit" in assert_one_clean_line(res["err"])
    assert res["peak_kb"] < 1024 * 1024, res
    assert not out.exists()


def test_reading_all_bombs_in_one_process_stays_small(tmp_path):
    """Peak RSS of a process that meets every format's bomb (the baseline is torch's import)."""
    paths = []
    for ext in BOMB_FORMATS:
        paths.append(tmp_path / f"b{ext}")
        paths[-1].write_bytes(header_bomb(ext))
    paths.append(tmp_path / "real.png")
    paths[-1].write_bytes(png_bomb())
    script = (
        "import sys, resource\n"
        "from netlens.images import read_image\n"
        "from netlens.errors import ImageError\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for f in sys.argv[1:]:\n"
        "    try: read_image(f)\n"
        "    except ImageError as e: print(e)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)\n"
    )
    res = run_measured([sys.executable, "-c", script, *map(str, paths)])
    lines = res["out"].splitlines()
    assert len(lines) == len(paths) + 1 and all("over the limit" in x for x in lines[:-1])
    assert res["peak_kb"] < 1024 * 1024, res
    assert int(lines[-1]) < 64 * 1024  # reading the bombs added < 64 MB to the process
    assert res["err"] == ""


def test_uint16_and_rgba_and_float_images_convert_like_before(tmp_path):
    rng = np.random.default_rng(0)
    deep = rng.integers(0, 65536, (30, 40, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    expected = (deep >> 8).astype(np.uint8)[:, :, ::-1]  # as Pillow reads a 16-bit colour PNG
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png"), expected)
    hdr = np.linspace(0, 4, 30 * 40 * 3, dtype=np.float32).reshape(30, 40, 3)
    cv2.imwrite(str(tmp_path / "x.pfm"), hdr)
    img = read_image(tmp_path / "x.pfm")
    assert img.min() == 0 and img.max() == 255


def test_preprocessed_tensor_input_is_not_read(tmp_path):
    from netlens.images import Preprocess, load_batch

    batch = load_batch(torch.zeros(2, 3, 8, 8), Preprocess(size=(8, 8)))
    assert batch.names == ["image0", "image1"]


@pytest.mark.parametrize("command", ["evaluate", "stats", "top", "ablate"])
def test_data_of_which_no_image_reads_is_one_line(tmp_path, command):
    """Every image unreadable: each is skipped, and then there is nothing. ``evaluate`` crashed
    (KeyError 'gradcam/deletion/score'), ``stats`` and ``top`` asked whether the data was
    empty."""
    (tmp_path / "circle").mkdir()
    for name in ("a.png", "b.jpg"):
        (tmp_path / "circle" / name).write_bytes(b"not an image")
    args = [command, "zoo:shapes-allconv", "--data", str(tmp_path), "-o", str(tmp_path / "o")]
    result = runner.invoke(app, [*args, "--quiet"])
    assert result.exit_code == 1
    line = assert_one_clean_line(result.output)
    assert line.startswith("error: none of the 2 images could be read (") and "a.png" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P-transparent"])
def test_transparent_images_read_as_the_models_own_loaders_read_them(mode, tmp_path):
    """torchvision's ImageFolder, timm, Hugging Face processors and fastai open images with
    PIL and ``convert("RGB")``, which drops alpha: a model trained through them saw the
    colours under transparent pixels (often black), not white. netlens composited on white,
    feeding such a model other images than its own pipeline did."""
    from PIL import Image
    from skimage import data

    rgb = data.chelsea()[:60, :80]
    rng = np.random.default_rng(1)
    alpha = np.where(rng.random(rgb.shape[:2]) < 0.5, 0, 255).astype(np.uint8)
    if mode == "P-transparent":
        img = Image.fromarray(rgb).quantize(16)
        img.info["transparency"] = 3
    elif mode == "LA":
        img = Image.fromarray(np.dstack([rgb[:, :, 0], alpha]), "LA")
    else:
        img = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    img.save(tmp_path / "t.png")
    with Image.open(tmp_path / "t.png") as opened:
        theirs = np.asarray(opened.convert("RGB"))
        in_memory = as_pixels(opened)
    np.testing.assert_array_equal(read_image(tmp_path / "t.png"), theirs)
    np.testing.assert_array_equal(to_channels(in_memory, 3), theirs)

"""Image and mask files as people save them, read as Pillow (the models' loaders) reads them.

Sweep 7: RGBA TIFFs came out multiplied by alpha and CMYK JPEGs in OpenCV's colours; masks
drawn on a transparent canvas read as all object, skipped the pixel limit and the EXIF
orientation, and a missing one printed OpenCV's own warning; orientation in a PNG's raw
profile or in XMP, and on a PIL image given in memory, was ignored; output names collided
with another input's stem, or differed only in case. Every file here is made in ``tmp_path``;
the reference is Pillow (``convert("RGB")``, ``ImageOps.exif_transpose``).
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageOps, PngImagePlugin

from netlens.errors import ImageError
from netlens.images import Preprocess, as_pixels, load_batch, read_image
from netlens.mask_files import read_mask

torch.set_num_threads(1)


def photo(h: int = 24, w: int = 36, seed: int = 0) -> np.ndarray:
    """A smooth colour picture (JPEG keeps it close) with a distinct top-left corner."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (h + w)], axis=2)
    rgb[: h // 3, : w // 3] = (250, 20, 20)
    return np.roll(rgb, seed, axis=1).astype(np.uint8)


def exif6() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: turn 90° clockwise to show it
    return exif


def upright_ref(path: Path) -> np.ndarray:
    return np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))


def rgba_picture() -> np.ndarray:
    a = np.dstack([photo(), np.full((24, 36), 255, np.uint8)])
    a[:8, :, 3] = 0  # transparent: colour hidden
    a[8:16, :18, 3] = 128  # half transparent
    return a


# -- 1. RGBA TIFFs -------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, "tiff_lzw"])
def test_an_rgba_tiff_keeps_its_colours_as_pillow_converts_it(tmp_path, compression) -> None:
    """libtiff's RGBA reader multiplied the colours by alpha (transparent pixels black)."""
    path = tmp_path / "rgba.tif"
    Image.fromarray(rgba_picture(), "RGBA").save(path, compression=compression)
    want = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(read_image(path), want)


def test_an_rgba_tiff_with_an_orientation_tag_is_read_upright(tmp_path) -> None:
    """Pillow, which now decodes RGBA TIFFs, turns them by their tag as libtiff did."""
    up = Image.fromarray(rgba_picture(), "RGBA")
    path = tmp_path / "turned.tif"
    up.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif6())
    np.testing.assert_array_equal(read_image(path), np.asarray(up.convert("RGB")))


# -- 7. CMYK JPEGs ---------------------------------------------------------------------------


def test_a_cmyk_jpeg_reads_as_pillow_converts_it(tmp_path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(photo()).convert("CMYK").save(path, quality=95)
    np.testing.assert_array_equal(read_image(path), np.asarray(Image.open(path).convert("RGB")))


def test_a_turned_cmyk_jpeg_is_read_upright_once(tmp_path) -> None:
    path = tmp_path / "cmyk6.jpg"
    sideways = Image.fromarray(photo()).transpose(Image.Transpose.ROTATE_90).convert("CMYK")
    sideways.save(path, quality=95, exif=exif6())
    np.testing.assert_array_equal(read_image(path), upright_ref(path))


# -- 2. masks on a transparent canvas --------------------------------------------------------


def drawn_on_transparent(path: Path, hidden=(255, 255, 255, 0)) -> np.ndarray:
    im = Image.new("RGBA", (40, 30), hidden)
    ImageDraw.Draw(im).rectangle([5, 4, 20, 18], fill=(255, 255, 255, 255))
    im.save(path)
    return np.asarray(im)[..., 3] > 0


@pytest.mark.parametrize("hidden", [(255, 255, 255, 0), (0, 0, 0, 0), (200, 0, 0, 0)])
def test_a_shape_on_a_transparent_canvas_is_the_mask(tmp_path, hidden) -> None:
    """The white canvas under transparent pixels made every pixel object."""
    path = tmp_path / "m.png"
    want = drawn_on_transparent(path, hidden)
    np.testing.assert_array_equal(read_mask(path), want)


def test_opaque_colour_and_alpha_only_masks_still_read(tmp_path) -> None:
    shape = np.zeros((30, 40), bool)
    shape[4:19, 5:21] = True
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[shape, 0] = 255  # red drawing, fully opaque
    Image.fromarray(rgba, "RGBA").save(tmp_path / "red.png")
    alpha_only = np.zeros((30, 40, 4), np.uint8)
    alpha_only[shape, 3] = 255  # drawn in the alpha channel alone
    Image.fromarray(alpha_only, "RGBA").save(tmp_path / "alpha.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "red.png"), shape)
    np.testing.assert_array_equal(read_mask(tmp_path / "alpha.png"), shape)


def test_a_region_target_reads_its_mask_as_evaluate_does(tmp_path) -> None:
    from netlens.targets import _mask_file

    path = tmp_path / "region.png"
    want = drawn_on_transparent(path)
    got = _mask_file(str(path), torch.Size([30, 40]))
    np.testing.assert_array_equal(got.numpy(), want)


# -- 3, 4, 8. masks are image files ----------------------------------------------------------


def test_a_mask_over_the_pixel_limit_is_refused_in_one_line(tmp_path, monkeypatch) -> None:
    path = tmp_path / "big.png"
    Image.new("1", (60, 50), 0).save(path)
    monkeypatch.setenv("NETLENS_MAX_PIXELS", "2000")
    with pytest.raises(ImageError, match=r"big.png is 60×50 pixels .* over the limit") as err:
        read_mask(path)
    assert "\n" not in str(err.value)


def test_a_mask_is_turned_by_its_exif_orientation(tmp_path) -> None:
    up = np.zeros((30, 40), np.uint8)
    up[2:10, 3:37] = 255  # a band at the top
    path = tmp_path / "m.png"
    Image.fromarray(up).transpose(Image.Transpose.ROTATE_90).save(path, exif=exif6())
    want = np.asarray(ImageOps.exif_transpose(Image.open(path))) > 0
    np.testing.assert_array_equal(want, up > 0)
    np.testing.assert_array_equal(read_mask(path), want)


def test_a_missing_mask_is_none_without_an_opencv_line(tmp_path, capfd) -> None:
    assert read_mask(tmp_path / "nowhere.png") is None
    assert "WARN" not in capfd.readouterr().err


# -- 5. orientation where Pillow's getexif finds it ------------------------------------------


def raw_profile(exif: Image.Exif) -> str:
    body = (b"Exif\x00\x00" + exif.tobytes()).hex()
    lines = "\n".join(body[i : i + 72] for i in range(0, len(body), 72))
    return f"\nexif\n{len(body) // 2:8d}\n{lines}\n"


XMP = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
    '22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
    'tiff:Orientation="{}"/></rdf:RDF></x:xmpmeta>'
)


def sideways() -> Image.Image:
    return Image.fromarray(photo()).transpose(Image.Transpose.ROTATE_90)


@pytest.mark.parametrize("compressed", [False, True], ids=["tEXt", "zTXt"])
def test_a_png_raw_profile_orientation_is_applied(tmp_path, compressed) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", raw_profile(exif6()), zip=compressed)
    path = tmp_path / "raw.png"
    sideways().save(path, pnginfo=info)
    want = upright_ref(path)
    assert want.shape == (24, 36, 3)
    np.testing.assert_array_equal(read_image(path), want)


def test_a_png_xmp_orientation_is_applied(tmp_path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", XMP.format(6), zip=True)
    path = tmp_path / "xmp.png"
    sideways().save(path, pnginfo=info)
    want = upright_ref(path)
    assert want.shape == (24, 36, 3)
    np.testing.assert_array_equal(read_image(path), want)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_an_xmp_orientation_is_applied(tmp_path, fmt) -> None:
    path = tmp_path / f"xmp.{fmt.lower()}"
    kw = {"quality": 95} if fmt == "JPEG" else {"lossless": True}
    sideways().save(path, fmt, xmp=XMP.format(6).encode(), **kw)
    want = upright_ref(path)
    assert want.shape == (24, 36, 3)
    assert np.abs(read_image(path).astype(int) - want).max() <= 2


def test_an_exif_orientation_wins_over_xmp_as_in_pillow(tmp_path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 1  # explicit: as stored
    path = tmp_path / "both.jpg"
    sideways().save(path, quality=95, exif=exif, xmp=XMP.format(6).encode())
    want = upright_ref(path)
    assert want.shape == (36, 24, 3)
    assert np.abs(read_image(path).astype(int) - want).max() <= 2


def test_a_huge_ztxt_chunk_is_not_inflated(tmp_path) -> None:
    """Pillow refuses a text chunk over 1 MB inflated; netlens reads no orientation from it."""
    from netlens.image_orientation import exif_orientation

    buf = io.BytesIO()
    sideways().save(buf, "PNG")
    png = buf.getvalue()
    body = b"Raw profile type exif\x00\x00" + zlib.compress(b"\n" * (8 << 20))
    chunk = len(body).to_bytes(4, "big") + b"zTXt" + body
    chunk += zlib.crc32(chunk[4:]).to_bytes(4, "big")
    assert exif_orientation(png[:33] + chunk + png[33:]) == 1


# -- 6. a PIL image in memory ----------------------------------------------------------------


def test_a_pil_image_is_read_as_its_file(tmp_path) -> None:
    path = tmp_path / "phone.jpg"
    sideways().save(path, quality=95, exif=exif6())
    from_file = read_image(path)
    assert from_file.shape == (24, 36, 3)
    np.testing.assert_array_equal(as_pixels(Image.open(path)), from_file)
    pre = Preprocess(size=(16, 16))
    a = load_batch(path, pre).tensor
    b = load_batch(Image.open(path), pre).tensor
    torch.testing.assert_close(a, b)
    turned_by_user = ImageOps.exif_transpose(Image.open(path))  # not turned a second time
    np.testing.assert_array_equal(as_pixels(turned_by_user), from_file)


# -- 9. output names ---------------------------------------------------------------------------


def save(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo(seed=seed)).save(path)
    return path


def test_a_suffixed_name_never_takes_another_inputs_stem(tmp_path) -> None:
    files = [save(tmp_path / n, i) for i, n in enumerate(["a.jpg", "a.png", "a_2.jpg"])]
    names = load_batch(files, Preprocess(size=(16, 16))).names
    assert names == ["a", "a_3", "a_2"]


def test_names_differing_only_in_case_are_made_unique(tmp_path) -> None:
    files = [save(tmp_path / "cam" / "IMG_1.JPG"), save(tmp_path / "phone" / "img_1.jpg", 1)]
    names = load_batch(files, Preprocess(size=(16, 16))).names
    assert names[0] == "IMG_1" and names[1].casefold() != "img_1"
    assert len({n.casefold() for n in names}) == 2


def test_names_without_a_collision_are_kept(tmp_path) -> None:
    files = [
        save(tmp_path / "x" / "a.png"),
        save(tmp_path / "y" / "a.png"),
        save(tmp_path / "b.png"),
    ]
    names = load_batch(files, Preprocess(size=(16, 16))).names
    assert names == ["a", "a_2", "b"]


def test_an_in_memory_name_never_takes_a_files_stem(tmp_path) -> None:
    items = [photo(), photo(1), save(tmp_path / "image1.png")]
    names = load_batch(items, Preprocess(size=(16, 16))).names
    assert names == ["image0", "image1_2", "image1"]

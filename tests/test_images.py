"""Image reading, preprocessing and bad-input messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from netlens.errors import ImageError
from netlens.images import Preprocess, load_batch, read_image


def test_reads_every_kind(image_files):
    rgb = read_image(image_files["rgb"])
    assert rgb.shape == (40, 50, 3) and rgb.dtype == np.uint8
    assert read_image(image_files["gray"]).shape == (40, 50, 1)
    assert read_image(image_files["rgba"]).shape == (40, 50, 3)
    deep = read_image(image_files["deep"])
    assert deep.dtype == np.uint8 and np.abs(deep.astype(int) - rgb.astype(int)).max() <= 1


def test_bgr_becomes_rgb(tmp_path):
    import cv2

    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 2] = 255  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), img)
    assert read_image(tmp_path / "red.png")[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize(
    ("make", "msg"),
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"not an image at all"), "cannot decode"),
    ],
)
def test_bad_files_one_line(tmp_path, make, msg):
    p = tmp_path / "x.png"
    make(p)
    with pytest.raises(ImageError, match=msg) as err:
        read_image(p)
    assert "\n" not in str(err.value)


def test_preprocess_normalises_and_resizes():
    pre = Preprocess(size=(8, 6), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = pre(np.full((20, 30, 3), 255, np.uint8))
    assert x.shape == (3, 8, 6) and torch.allclose(x, torch.ones_like(x))
    gray = Preprocess(size=(4, 4), channels=1, mean=(0.0,), std=(1.0,))
    assert gray(np.zeros((9, 9, 3), np.uint8)).shape == (1, 4, 4)


def test_centre_crop_and_denormalize():
    pre = Preprocess(size=(4, 4), crop_pct=0.5, mean=(0, 0, 0), std=(1, 1, 1))
    img = np.zeros((8, 8, 3), np.uint8)
    img[2:6, 2:6] = 200
    x = pre(img)
    assert torch.allclose(x, torch.full_like(x, 200 / 255))
    assert pre.denormalize(x).shape == (4, 4, 3)


def test_batch_goes_on_past_bad_files(image_files, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"junk")
    pre = Preprocess(size=(16, 16))
    batch = load_batch([image_files["rgb"], bad, image_files["gray"]], pre)
    assert len(batch) == 2 and batch.names == ["rgb", "gray"]
    assert len(batch.errors) == 1 and "bad.jpg" in batch.errors[0]
    with pytest.raises(ImageError):
        load_batch([bad], pre)
    folder = load_batch(tmp_path, pre)  # a folder works as images
    assert len(folder) == 4 and len(folder.errors) == 1


def test_arrays_and_tensors():
    pre = Preprocess(size=(8, 8))
    arr = np.random.default_rng(0).random((10, 12, 3)).astype(np.float32)
    assert load_batch(arr, pre).tensor.shape == (1, 3, 8, 8)
    t = torch.randn(2, 3, 5, 5)
    assert load_batch(t, pre).tensor is t  # used as is


def test_in_memory_pixels_of_every_dtype_read_as_their_file_would(tmp_path):
    """uint16 arrays were clipped at 255 (a white picture); a uint8 tensor such as
    ``torchvision.io.read_image`` returns (C×H×W) was fed to the model as a preprocessed input
    and failed with "expected scalar type Byte"."""
    import cv2
    import torchvision

    pre = Preprocess(size=(16, 16))
    rgb = np.random.default_rng(1).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "img.png"), rgb[..., ::-1])
    ref = load_batch(tmp_path / "img.png", pre).tensor
    deep = rgb.astype(np.uint16) * 257
    chw = torchvision.io.read_image(str(tmp_path / "img.png"))
    assert chw.dtype == torch.uint8 and chw.shape == (3, 20, 24)
    for given in (
        rgb,
        deep,
        rgb / 255.0,
        rgb.astype(np.float32),
        chw,
        chw[None].repeat(2, 1, 1, 1),
    ):
        got = load_batch(given, pre)
        assert torch.equal(got.tensor[:1], ref), type(given)
        assert got.original(0).shape == (20, 24, 3)


@pytest.mark.parametrize(
    ("values", "shown"),
    [((-2.1, 2.6), "from -2.1 to 2.6"), ((0, 4095), "from 0 to 4095"), ((0, np.nan), "NaN")],
)
def test_pixels_out_of_any_image_range_are_refused_not_clipped(values, shown):
    arr = np.zeros((6, 6, 3), np.float32)
    arr[0, 0, 0], arr[1, 1, 1] = values
    with pytest.raises(ImageError, match=shown):
        load_batch(arr, Preprocess(size=(4, 4)), strict=True)


def test_a_float_tensor_in_0_1_for_a_normalising_model_is_flagged():
    from netlens.errors import NetlensWarning

    image_like = torch.rand(1, 3, 8, 8)
    with pytest.warns(NetlensWarning, match=r"values all lie in \[0, 1\].*mean 0.485"):
        assert load_batch(image_like, Preprocess(size=(8, 8))).tensor is image_like
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_batch(torch.randn(1, 3, 8, 8), Preprocess(size=(8, 8)))  # normalised: no word
        load_batch(image_like, Preprocess(size=(8, 8), mean=(0.0,) * 3, std=(1.0,) * 3))


@pytest.mark.parametrize(
    ("mode", "atol"), [("P", 0.05), ("CMYK", 0.0), ("YCbCr", 0.1), ("PA", 0.05)]
)
def test_pil_images_in_any_mode_read_as_their_colours(mode, atol):
    """As arrays, a palette image is its indices, CMYK four inks and YCbCr other channels;
    they were read as gray or as RGB. LA and PA (two channels) crashed."""
    from PIL import Image
    from skimage import data

    pre = Preprocess(size=(32, 32))
    rgb = Image.fromarray(data.chelsea())
    ref = load_batch(rgb, pre).tensor
    given = rgb.convert("RGBA").convert("PA") if mode == "PA" else rgb.convert(mode)
    got = load_batch(given, pre).tensor
    assert float((got - ref).abs().mean()) <= atol
    gray = load_batch(rgb.convert("L"), pre).tensor
    assert torch.allclose(load_batch(rgb.convert("LA"), pre).tensor, gray)


def test_a_dark_16_bit_image_is_read_as_it_is_with_one_warning(tmp_path, monkeypatch):
    """12-bit camera data saved in 16 bits reads almost black (as in OpenCV and scikit-image);
    netlens reads it so all the same but says so, in one line per image (three at most)."""
    import warnings

    import cv2
    from skimage import data as photos

    from netlens import image_decode
    from netlens.errors import NetlensWarning
    from netlens.images import as_pixels, read_image

    monkeypatch.setattr(image_decode, "_DARK", [0])
    twelve = photos.camera().astype(np.uint16) * 16
    cv2.imwrite(str(tmp_path / "twelve.png"), twelve)
    cv2.imwrite(str(tmp_path / "full.png"), twelve * 16)
    with pytest.warns(NetlensWarning, match=r"twelve\.png: .*below 4081 .*12 bits.*16 of 255"):
        dark = read_image(tmp_path / "twelve.png")
    assert dark.max() == 16  # read as it is: no guess at a stretch
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(tmp_path / "full.png").max() == 254  # full range: no warning
    with pytest.warns(NetlensWarning, match="a 16-bit image array"):
        as_pixels(twelve)
    with pytest.warns(NetlensWarning) as seen:
        for _ in range(3):
            read_image(tmp_path / "twelve.png")
    assert [str(w.message) for w in seen][1:] == [
        "more 16-bit images with values below 4096 read almost black"
    ] * 2

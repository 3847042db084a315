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

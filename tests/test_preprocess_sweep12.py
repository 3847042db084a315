"""Preprocessing parity (sweep 12): ``crop_pct`` above 1 pads as timm's and torchvision's
``CenterCrop`` pad (timm's VOLO 448/512 checkpoints record 1.15), 16-bit colour PNG/TIFF files
read as Pillow reads them (x >> 8), and gray by Pillow's ``convert("L")`` formula."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torch import nn
from torchvision import transforms as T

import netlens
from netlens.errors import NetlensError
from netlens.images import as_pixels, read_image, to_channels
from netlens.preprocess import Preprocess

pytestmark = [pytest.mark.usefixtures("one_thread")]

CHELSEA = skdata.chelsea()  # 300×451
PAD_PCT = 1.15  # timm's volo_d4_448 / volo_d5_448 / volo_d5_512 data config


def _photo(h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(CHELSEA).resize((w, h), Image.Resampling.BOX))


def _timm_reference(img: np.ndarray, size: int, mean: tuple[float, ...], std: tuple[float, ...]):
    from timm.data import create_transform

    tf = create_transform(
        input_size=(3, size, size),
        crop_pct=PAD_PCT,
        interpolation="bicubic",
        crop_mode="center",
        mean=mean,
        std=std,
    )
    return tf(Image.fromarray(img))


def _image_rows_cols(x: torch.Tensor, pad: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the rows and columns of ``x`` that are not all padding."""
    is_pad = (x - pad.view(-1, 1, 1)).abs().amax(0) < 1e-6
    rows = np.flatnonzero(~is_pad.all(1).numpy())
    cols = np.flatnonzero(~is_pad.all(0).numpy())
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


@pytest.mark.parametrize("engine", ["netlens", "timm"])
@pytest.mark.parametrize("hw", [(37, 61), (61, 37), (50, 121)])
@pytest.mark.parametrize("size", [48, 49])
def test_crop_pct_above_one_pads_as_timm_and_torchvision(engine, hw, size) -> None:
    """Refused before ("crop_pct must be in (0, 1], not 1.15"); timm resizes the shorter side
    to floor(size / 1.15) and CenterCrop pads the rest with black."""
    img = _photo(*hw)
    spec = Preprocess(
        size=size, crop_pct=PAD_PCT, interpolation="bicubic", crop_mode="center", engine=engine
    )
    x = spec(img)
    want = _timm_reference(img, size, spec.mean, spec.std)
    assert x.shape == want.shape and float((x - want).abs().max()) < 1e-6
    tv = T.Compose(
        [
            T.Resize(math.floor(size / PAD_PCT), interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(spec.mean, spec.std),
        ]
    )(Image.fromarray(img))
    assert float((x - tv).abs().max()) < 1e-6


def test_a_timm_model_recording_crop_pct_above_one_loads_with_its_own_input() -> None:
    import timm
    from timm.data import create_transform, resolve_data_config

    overlay = {"crop_pct": PAD_PCT, "input_size": (3, 48, 48), "interpolation": "bicubic"}
    model = timm.create_model("test_resnet", num_classes=3, pretrained_cfg_overlay=overlay)
    lens = netlens.load(model.eval())
    assert lens.transform.crop_pct == PAD_PCT and lens.transform.engine == "timm"
    ref = create_transform(**resolve_data_config(model=model))
    for img in (_photo(40, 90), _photo(71, 33)):
        want = ref(Image.fromarray(img))
        assert float((lens.preprocess(img)[0] - want).abs().max()) < 1e-6


@pytest.mark.parametrize("hw", [(40, 90), (90, 41), (30, 30)])
def test_padded_border_lies_outside_the_photo_in_the_overlay_geometry(hw) -> None:
    """input_box is where the tensor shows the photo (its non-padded rows and columns);
    crop_box then spans the whole photo on a padded side; a CAM's boxes agree."""
    img = _photo(*hw)
    spec = Preprocess(size=48, crop_pct=PAD_PCT, crop_mode="center", interpolation="bicubic")
    x = spec(img)
    pad = (0 - torch.tensor(spec.mean)) / torch.tensor(spec.std)
    top, bottom, left, right = spec.input_box(hw)
    assert (top, bottom, left, right) == _image_rows_cols(x, pad)
    short = math.floor(48 / PAD_PCT)  # 41: a margin of 7, 3 before (torchvision's floor)
    ctop, cbottom, cleft, cright = spec.crop_box(hw)
    if hw[0] <= hw[1]:
        assert (top, bottom) == (3, 44) and (ctop, cbottom) == (0, hw[0])
    if hw[1] <= hw[0]:
        assert (left, right) == (3, 44) and (cleft, cright) == (0, hw[1])
    if hw[0] < hw[1]:  # the longer side is cropped: 48 of its resized length, centred
        long = int(short * hw[1] / hw[0])
        start = round((long - 48) / 2)
        assert (cleft, cright) == (round(start * hw[1] / long), round((start + 48) * hw[1] / long))

    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    net = nn.Sequential(net, nn.Flatten(), nn.Linear(4, 2)).eval()
    with pytest.warns(Warning):  # ImageNet's mean/std guessed
        lens = netlens.load(
            net, preprocess={"size": 48, "crop_pct": PAD_PCT, "crop_mode": "center"}
        )
    result = lens.cam(img, layer="0.0")
    crop, inside = result._boxes(result.preprocess, 0, hw)
    assert inside == lens.transform.input_box(hw)
    x = lens.preprocess(img)[0]
    pad = (0 - torch.tensor(result.preprocess.mean)) / torch.tensor(result.preprocess.std)
    assert inside == _image_rows_cols(x, pad) and crop == result.preprocess.crop_box(hw)
    assert result.overlay(0).shape == img.shape


def test_a_huge_aspect_ratio_is_padded_too() -> None:
    """The crop-first path (the resize would pass 16 MP) pads the short side as well."""
    img = np.tile(_photo(4, 400), (1, 250, 1))  # 4×100000: 27 rows × 675000 resized
    spec = Preprocess(size=32, crop_pct=PAD_PCT, crop_mode="center", interpolation="bilinear")
    x = spec(img)
    pad = (0 - torch.tensor(spec.mean)) / torch.tensor(spec.std)
    assert spec.input_box(img.shape[:2]) == _image_rows_cols(x, pad) == (2, 29, 0, 32)


def test_crop_pct_beyond_the_bound_is_one_line() -> None:
    for bad in (1.3, 2.0, 0.0, float("nan")):
        with pytest.raises(NetlensError, match=r"crop_pct must be in \(0, 1.25\]") as err:
            Preprocess(crop_pct=bad)
        assert "\n" not in str(err.value)
    spec = Preprocess(size=48, crop_pct=PAD_PCT, crop_mode="center")
    assert Preprocess.from_dict(spec.to_dict()) == spec
    assert "padded" in spec.to_dict()["resize_rule"]


# -- 16-bit files ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["rgb.png", "rgba.png", "rgb.tif", "rgba.tif"])
def test_a_16_bit_colour_file_reads_as_pillow_reads_it(tmp_path, name) -> None:
    """Read as round(x / 257) before, where Pillow (and so timm's and torchvision's loaders)
    gives x >> 8: one level apart on a quarter of the values."""
    rng = np.random.default_rng(12)
    x16 = rng.integers(0, 65536, (24, 40, 4), dtype=np.uint16)
    path = tmp_path / name
    assert cv2.imwrite(str(path), x16 if name.startswith("rgba") else x16[..., :3])
    with Image.open(path) as im:
        pil = np.asarray(im.convert("RGB"))
        given = as_pixels(im)
    np.testing.assert_array_equal(read_image(path), pil)
    np.testing.assert_array_equal(read_image(path), given)
    spec = Preprocess(size=(24, 40), crop_pct=1.0)
    assert torch.equal(spec(read_image(path)), spec(given))


def test_a_16_bit_gray_file_keeps_its_scaling(tmp_path) -> None:
    x16 = np.arange(0, 65536, 64, dtype=np.uint16).reshape(32, 32)
    path = tmp_path / "gray.png"
    assert cv2.imwrite(str(path), x16)
    want = np.floor(x16 / 257 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(read_image(path)[..., 0], want)


# -- gray ---------------------------------------------------------------------------------------
def test_gray_is_pillows_convert_l() -> None:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(rgb).convert("L"))
    np.testing.assert_array_equal(to_channels(rgb, 1)[..., 0], pil)
    rgba = np.dstack([rgb, rng.integers(0, 256, (64, 96), dtype=np.uint8)])
    np.testing.assert_array_equal(to_channels(rgba, 1)[..., 0], pil)


@pytest.mark.parametrize("engine", ["netlens", "timm"])
def test_a_one_channel_model_gets_torchvisions_and_timms_gray(engine) -> None:
    """OpenCV's RGB2GRAY before: one grey level apart from convert("L") on some pixels."""
    from timm.data import create_transform

    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    gray = Image.fromarray(img).convert("L")
    same = Preprocess(size=(40, 56), channels=1, mean=(0.5,), std=(0.5,), engine=engine)
    want = T.Compose([T.Grayscale(), T.ToTensor(), T.Normalize((0.5,), (0.5,))])(
        Image.fromarray(img)
    )
    assert torch.equal(same(img), want)
    spec = Preprocess(
        size=32,
        channels=1,
        mean=(0.485,),
        std=(0.229,),
        crop_pct=0.875,
        interpolation="bicubic",
        crop_mode="center",
        engine=engine,
    )
    ref = create_transform(
        input_size=(1, 32, 32),
        interpolation="bicubic",
        crop_pct=0.875,
        mean=(0.485,),
        std=(0.229,),
    )(gray)
    assert float((spec(img) - ref).abs().max()) < 1e-6


def test_a_saved_crop_pct_above_one_loads_back(tmp_path) -> None:
    """netlens.save wrote crop_pct 1.15 (VOLO's), and netlens.load refused its own checkpoint
    ("must be in (0, 1]"); the CLI's --crop-pct stopped at 1 too."""
    import timm
    from typer.testing import CliRunner

    from netlens.cli.app import app

    model = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    lens = netlens.load(model, input_size=(3, 32, 32), crop_pct=1.15)
    netlens.save(lens, tmp_path / "m.pt", arch="resnet10t", arch_kwargs={"num_classes": 3})
    back = netlens.load(tmp_path / "m.pt")
    assert back.transform.crop_pct == pytest.approx(1.15)
    img = tmp_path / "a.png"
    Image.fromarray((np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)).save(img)
    torch.testing.assert_close(back.preprocess(str(img)), lens.preprocess(str(img)))
    args = ["cam", str(tmp_path / "m.pt"), str(img), "--crop-pct", "1.15", "-o", str(tmp_path)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output

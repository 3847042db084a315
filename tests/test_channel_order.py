"""Models trained on B, G, R images (OpenCV's ``cv2.imread`` without a conversion, Caffe
conversions): ``channel_order="bgr"`` / ``--channel-order bgr`` feeds them what they saw."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from typer.testing import CliRunner

import netlens
from netlens.cli.app import app
from netlens.errors import NetlensError
from netlens.preprocess import Preprocess

MEAN_BGR, STD_BGR = (0.406, 0.456, 0.485), (0.225, 0.224, 0.229)


def _cv2_input(path: str, size: int) -> torch.Tensor:
    """How an OpenCV training script feeds its model: B, G, R, resized, normalised."""
    bgr = cv2.resize(cv2.imread(path), (size, size), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(bgr.transpose(2, 0, 1).copy()).float() / 255
    return (x - torch.tensor(MEAN_BGR)[:, None, None]) / torch.tensor(STD_BGR)[:, None, None]


@pytest.mark.parametrize("engine", ["netlens", "timm"])
def test_bgr_input_is_the_rgb_pipeline_on_bgr_pixels(engine: str) -> None:
    img = skimage.data.astronaut()
    bgr = Preprocess(size=(64, 64), mean=MEAN_BGR, std=STD_BGR, channel_order="bgr", engine=engine)
    plain = Preprocess(size=(64, 64), mean=MEAN_BGR, std=STD_BGR, engine=engine)
    torch.testing.assert_close(bgr(img), plain(img[:, :, ::-1].copy()), rtol=0, atol=0)
    shown = plain.denormalize(plain(img[:, :, ::-1].copy()))[:, :, ::-1]  # its pixels, as RGB
    assert np.array_equal(bgr.denormalize(bgr(img)), shown)
    assert "BGR" in bgr.describe() and bgr.to_dict()["channel_order"] == "bgr"
    assert "channel_order" not in plain.to_dict()
    with pytest.raises(NetlensError, match="channel_order 'bgr' needs 3 channels"):
        Preprocess(channels=1, channel_order="bgr")


def test_a_bgr_model_is_explained_on_its_own_input(tmp_path) -> None:
    from netlens.models.archs import lenet5

    torch.manual_seed(0)
    model = lenet5(num_classes=3, in_chans=3, img_size=64).eval()
    with torch.no_grad():
        model.conv1.weight[:, 0] *= 4  # leans on the blue plane, as its training images had it
    path = str(tmp_path / "chelsea.png")
    cv2.imwrite(path, cv2.cvtColor(skimage.data.chelsea(), cv2.COLOR_RGB2BGR))
    size = 64
    lens = netlens.load(model, size=size, mean=MEAN_BGR, std=STD_BGR, channel_order="bgr")
    lens.transform = lens.transform.override(interpolation="box")  # cv2's INTER_AREA, shrinking
    with torch.no_grad():
        want = model(_cv2_input(path, size)[None])
        got = model(lens.preprocess([path]))
        rgb = model(lens.on(model).preprocess([path]))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-3)
    assert torch.allclose(got, rgb)  # lens.on keeps the spec
    kernels = lens.kernels()
    assert kernels.meta["channel_order"] == "bgr (shown as RGB)"
    w = model.conv1.weight.detach().numpy()
    np.testing.assert_array_equal(kernels.arrays["weight"], w)
    np.testing.assert_array_equal(kernels.arrays["tiles"], w[:, ::-1].transpose(0, 2, 3, 1))
    kwargs = {"in_chans": 3, "img_size": 64}
    saved = netlens.save(lens, tmp_path / "bgr.pt", arch="lenet5", arch_kwargs=kwargs)
    assert netlens.load(saved).transform.channel_order == "bgr"
    res = CliRunner().invoke(
        app,
        ["cam", str(saved), path, "--out", str(tmp_path / "o"), "--json"],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "o" / "cam.json").read_text())["run"]["preprocess"]
    assert doc["channel_order"] == "bgr"
    over = CliRunner().invoke(
        app, ["cam", str(saved), path, "--channel-order", "rgb", "--out", str(tmp_path / "p")]
    )
    assert over.exit_code == 0, over.output
    doc = json.loads((tmp_path / "p" / "cam.json").read_text())["run"]["preprocess"]
    assert "channel_order" not in doc and "channel_order=rgb" in doc["source"]

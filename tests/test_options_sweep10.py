"""Sweep 10: a callable ``preprocess=`` feeding B, G, R is drawn in R, G, B; the README's shared
option names (``top``, ``layer``, ``method``) work in ``lens.run`` and ``netlens run --opt``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyNet, layer_output, randomize_bn
from PIL import Image
from typer.testing import CliRunner

import netlens
from netlens.analyzers import specs
from netlens.analyzers.options import OptionError, parse_options
from netlens.cli.app import app

pytestmark = [pytest.mark.usefixtures("one_thread")]

SIZE = 40


def _picture(path: Path) -> None:
    """A picture whose three channels differ everywhere (so a flip shows)."""
    y, x = np.mgrid[0:48, 0:56]
    rgb = np.stack([x * 4, y * 5, 255 - x * 3], axis=2).clip(0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(path)


def _prep(order: str):  # noqa: ANN202
    """A user's transform: resize, to [-1, 1], in ``order`` (an OpenCV-trained model: bgr)."""

    def prep(img: Image.Image) -> torch.Tensor:
        a = np.asarray(img.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR), np.float32) / 255
        a = a[:, :, ::-1] if order == "bgr" else a
        return torch.from_numpy(a.copy()).permute(2, 0, 1) * 2 - 1

    return prep


@pytest.mark.parametrize("order", ["bgr", "rgb"])
def test_a_bgr_callable_is_drawn_in_rgb_and_fed_as_it_returns(tmp_path: Path, order: str) -> None:
    path = tmp_path / "pic.png"
    _picture(path)
    torch.manual_seed(0)
    model = randomize_bn(TinyNet()).eval()
    prep = _prep(order)
    lens = netlens.load(
        model, preprocess=prep, channel_order=order, mean=(0.5,) * 3, std=(0.5,) * 3
    )
    img = Image.open(path)
    want = np.asarray(img.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)).astype(float)
    fed = lens.preprocess([str(path)])
    torch.testing.assert_close(fed[0], prep(img), rtol=0, atol=0)  # the model input: unchanged
    shown = lens.transform.denormalize(fed[0]).astype(float)
    assert np.abs(shown - want).max() <= 1  # R, G, B (a blue cat was 124 off)
    inputs = lens.run("saliency", [str(path)]).arrays["inputs"][0].astype(float)
    assert np.abs(inputs - want).max() <= 1


# -- the README's shared option names ---------------------------------------------------------
def _data(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c in "ab":
        (root / c).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return root


@pytest.fixture
def lens_and_data(tmp_path: Path):  # noqa: ANN201
    torch.manual_seed(0)
    model = randomize_bn(TinyNet()).eval()
    lens = netlens.load(model, classes=["a", "b", "c", "d"], mean=(0.5,) * 3, std=(0.5,) * 3)
    return lens, _data(tmp_path / "data")


def test_top_is_k_for_top_activations(lens_and_data) -> None:  # noqa: ANN001
    lens, data = lens_and_data
    got = lens.run("top-activations", data, layer="conv2", top=2)
    assert got.meta["k"] == 2 and got.meta["run"]["options"]["k"] == 2
    x = lens.preprocess(sorted(str(p) for p in data.rglob("*.png")))
    peaks = layer_output(lens.model, "conv2", x).amax((2, 3)).T  # channel × image
    want = peaks.topk(2, dim=1).values  # each channel's two highest peaks over the data
    np.testing.assert_allclose(got.arrays["scores"], want.numpy(), rtol=1e-5, atol=1e-5)


def test_layer_is_layers_for_stats(lens_and_data) -> None:  # noqa: ANN001
    lens, data = lens_and_data
    got = lens.run("stats", data, layer="conv2")
    assert got.meta["run"]["options"]["layers"] == "conv2"
    x = lens.preprocess(sorted(str(p) for p in data.rglob("*.png")))
    want = layer_output(lens.model, "conv2", x).amax(0)  # each unit's largest value
    np.testing.assert_allclose(got.arrays["conv2:unit_max"], want.numpy(), rtol=1e-5, atol=1e-5)


def test_alias_and_its_option_together_are_refused_in_one_line() -> None:
    with pytest.raises(OptionError) as err:
        parse_options("top-activations", specs.TOP.options, {"top": 2, "k": 3})
    assert "\n" not in str(err.value) and "give one of them" in str(err.value)
    got = parse_options("ablate", specs.ABLATE.options, {"layers": None, "layer": "x"})
    assert got.layers == "x"  # lens.ablate passes layers=None: that is not giving it
    assert parse_options("evaluate", specs.EVALUATE.options, {"method": "eigencam"}).methods == (
        "eigencam"
    )
    assert parse_options("features", specs.FEATURES.options, {"top": 3}).top == 3  # its own
    with pytest.raises(OptionError, match="no option 'k'; did you mean 'top'"):
        parse_options("features", specs.FEATURES.options, {"k": 3})
    with pytest.raises(OptionError, match="kernels has no option 'top' \\(options"):
        parse_options("kernels", specs.KERNELS.options, {"top": 3})


def test_netlens_run_takes_the_shared_names(tmp_path: Path) -> None:
    data, out = _data(tmp_path / "data"), tmp_path / "out"
    args = ["run", "top-activations", "zoo:shapes-allconv", "-d", str(data), "-o", str(out)]
    res = CliRunner().invoke(app, [*args, "--opt", "top=2"])
    assert res.exit_code == 0, res.output
    doc = json.loads(next(out.rglob("*.json")).read_text())
    assert doc["run"]["options"]["k"] == 2


def test_lens_evaluate_takes_method_as_the_shared_name() -> None:
    # lens.evaluate always passed methods="gradcam", so method= was refused as given twice
    lens = netlens.load("zoo:shapes-allconv")
    got = lens.evaluate("shapes", method="eigencam", metrics="pointing", limit=4)
    assert [k.split("/")[0] for k in got.arrays if k.endswith("pointing/score")] == ["eigencam"]
    plain = lens.evaluate("shapes", metrics="pointing", limit=4)
    assert [k.split("/")[0] for k in plain.arrays if k.endswith("pointing/score")] == ["gradcam"]

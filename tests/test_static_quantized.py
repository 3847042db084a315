"""A statically quantized model (torchvision's quantizable ResNet-18, fused and converted with
torch.ao's eager API): its layers output quantized tensors and its convs keep their weights
behind a ``weight()`` method. stats, features, kernels and ablate crashed with torch's own
message ("Creation of quantized tensor requires quantized dtype", "Could not run 'aten::zero_'
... 'QuantizedCPU'") or found no conv to show; each is checked against plain hooks here.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.ao.quantization as tq
from conftest import randomize_bn
from torch import nn

import netlens

SIZE = 48


@pytest.fixture(scope="module")
def quantized() -> nn.Module:
    from torchvision.models.quantization import resnet18

    torch.manual_seed(0)
    model = randomize_bn(resnet18(weights=None, quantize=False, num_classes=5)).eval()
    model.fuse_model()
    model.qconfig = tq.get_default_qconfig(torch.backends.quantized.engine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's eager API is deprecated in favour of torchao
        tq.prepare(model, inplace=True)
        model(torch.rand(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)))
        tq.convert(model, inplace=True)
    return model


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(6, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))


def _lens(model: nn.Module) -> netlens.Lens:
    return netlens.load(model, size=SIZE, mean=(0.5,) * 3, std=(0.25,) * 3)


def _outputs(model: nn.Module, x: torch.Tensor, layer: str, replace=None) -> tuple:
    """The layer's output as floats, and the model's logits, with the output ``replace``d."""
    seen = []

    def hook(m, i, out):
        seen.append(out.dequantize())
        if replace is not None:
            new = replace(out.dequantize())
            return torch.quantize_per_tensor(new, out.q_scale(), out.q_zero_point(), out.dtype)
        return None

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        handle.remove()
    return seen[0], logits


def _kl(base: torch.Tensor, ablated: torch.Tensor) -> float:
    p, q = base.double().log_softmax(1), ablated.double().log_softmax(1)
    return (p.exp() * (p - q)).sum(1).mean().item()


def test_stats_and_features_read_a_quantized_layers_values(quantized, images) -> None:
    lens = _lens(quantized)
    out, _ = _outputs(quantized, images, "layer2")
    stats = lens.run("stats", (images, torch.zeros(6).long()), layers="layer2")
    row = stats.table[0]
    assert row["layer"] == "layer2" and row["shape"] == list(out.shape[1:])
    assert row["mean"] == pytest.approx(out.double().mean().item(), rel=1e-6)
    assert row["max"] == pytest.approx(out.max().item(), rel=1e-6)
    feats = lens.run("features", images[:1], layer="layer2", top=4)
    want = out[0].mean((1, 2))
    for r in feats.table:
        assert r["mean"] == pytest.approx(want[r["channel"]].item(), rel=1e-5)
    assert [r["channel"] for r in feats.table] == want.argsort(descending=True)[:4].tolist()


def test_kernels_finds_and_draws_a_quantized_first_conv(quantized) -> None:
    r = _lens(quantized).run("kernels")
    assert r.meta["layer"] == "conv1" and r.meta["view"] == "rgb"
    assert np.array_equal(r.arrays["weight"], quantized.conv1.weight().dequantize().numpy())


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_ablating_a_quantized_block_matches_a_hook_that_requantizes(quantized, images, mode):
    lens = _lens(quantized)
    data = (images, torch.zeros(6).long())
    result = lens.run("ablate", data, layers="layer3,layer4.0", mode=mode, metric="kl")
    _, base = _outputs(quantized, images, "layer3")
    for row in result.rows:
        out, _ = _outputs(quantized, images, row["key"])
        fill = torch.zeros_like(out[0]) if mode == "zero" else out.double().mean(0).float()
        _, ablated = _outputs(quantized, images, row["key"], lambda o, f=fill: f.expand_as(o))
        assert row["value"] == pytest.approx(_kl(base, ablated), rel=1e-4, abs=1e-7)
        assert row["value"] > 1e-4  # the ablation changes the outputs


def test_ablating_a_quantized_layers_channels(quantized, images) -> None:
    lens = _lens(quantized)
    data = (images, torch.zeros(6).long())
    result = lens.run("ablate", data, layers="layer4.1", channels="3,7", metric="kl")
    _, base = _outputs(quantized, images, "layer4.1")
    for row in result.rows:
        c = row["channel"]

        def off(o: torch.Tensor, c: int = c) -> torch.Tensor:
            o = o.clone()
            o[:, c] = 0
            return o

        _, ablated = _outputs(quantized, images, "layer4.1", off)
        assert row["value"] == pytest.approx(_kl(base, ablated), rel=1e-4, abs=1e-7)


def test_a_quantized_model_pickled_whole_is_one_line(quantized, tmp_path) -> None:
    """torch saves its quantized layers without their submodules: the file unpickles into a
    broken model, which failed later with "'ConvReLU2d' object has no attribute '_modules'"."""
    from hostile_inputs import assert_one_clean_line
    from typer.testing import CliRunner

    from netlens.cli.app import app

    path = tmp_path / "quantized.pt"
    torch.save(quantized, path)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["kernels", str(path), "--trust", "--out", str(out)])
    assert res.exit_code == 1 and not out.exists()
    assert "torch cannot save a statically quantized model whole" in res.output
    assert_one_clean_line(res.output)

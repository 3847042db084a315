"""Sanity's randomisation on layers under ``torch.nn.utils.parametrizations`` (weight_norm,
spectral_norm): their stored weights are what must be re-drawn."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

from netlens.metrics.randomization import model_copy, randomize_modules


@pytest.mark.parametrize("wrap", ["weight_norm", "spectral_norm"])
def test_a_parametrized_layer_gets_new_weights(wrap: str) -> None:
    torch.manual_seed(0)
    conv = getattr(parametrizations, wrap)(nn.Conv2d(3, 8, 3))
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        before_w, before_out = conv.weight.clone(), model(x)
    copy = model_copy(model)
    randomize_modules(copy, ["0"], seed=1)
    with torch.no_grad():
        new_w = copy[0].weight
        assert (new_w - before_w).abs().max() > 0.05  # the weight the layer uses changed
        assert not torch.allclose(copy(x), before_out)
        assert torch.equal(conv.weight, before_w) and torch.equal(model(x), before_out)
    assert nn.utils.parametrize.is_parametrized(copy[0], "weight")  # still parametrized
    again = model_copy(model)
    randomize_modules(again, ["0"], seed=1)
    with torch.no_grad():
        assert torch.equal(again[0].weight, copy[0].weight)  # seeded

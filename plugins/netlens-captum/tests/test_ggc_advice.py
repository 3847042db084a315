"""guided-gradcam on a model that reuses one nn.ReLU for its convs and its head: the refusal of
a call captum cannot hook names a layer that works, and that layer gives captum's own maps."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import netlens
from netlens.errors import AnalyzerError


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


pytestmark = [pytest.mark.usefixtures("one_thread")]


class Reused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.c3 = nn.Conv2d(16, 16, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.c1(x))
        x = self.act(self.c2(x))
        x = self.act(self.c3(x))
        return self.fc2(self.act(self.fc1(x.mean((2, 3)))))


def test_refusal_advises_a_layer_that_works():
    from captum.attr import GuidedGradCam

    torch.manual_seed(0)
    model = Reused().eval()
    lens = netlens.load(model, classes=list("abcde"), input_size=32, mean=[0.5] * 3, std=[0.5] * 3)
    x = torch.randn(2, 3, 32, 32)
    for layer in ("auto", "act@2"):  # auto picks act@2, the last spatial call
        with pytest.raises(AnalyzerError, match=r"'act@2' is call 2 of 4") as got:
            lens.run("guided-gradcam", x, layer=layer)
        advised = re.search(r"pick '([^']+)'", str(got.value))
        assert advised and advised.group(1) == "c3"
    result = lens.run("guided-gradcam", x, layer="c3", target=[1, 3])
    assert result.meta["layer"] == "c3"
    ref = GuidedGradCam(model, model.c3).attribute(x.clone().requires_grad_(), target=[1, 3])
    got = torch.from_numpy(result.arrays["attributions"])
    torch.testing.assert_close(got, ref.detach().float(), rtol=1e-4, atol=1e-6)
    assert got.abs().sum() > 0


def test_no_advice_when_no_single_call_layer_gives_the_maps():
    class Shared(nn.Module):  # one conv used twice: nothing before its first call runs once
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(self.conv(x)).mean((2, 3)))

    lens = netlens.load(Shared().eval(), input_size=16, mean=[0.5] * 3, std=[0.5] * 3)
    with pytest.raises(AnalyzerError, match=r"call 0 of 2.*; so use netlens cam") as got:
        lens.run("guided-gradcam", torch.randn(1, 3, 16, 16), layer="conv@0")
    assert "pick" not in str(got.value)

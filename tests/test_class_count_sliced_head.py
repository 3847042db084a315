"""Class names against a model whose forward uses only part of its last Linear (``fc(x)[:, :3]``):
the output's width counts, not the Linear's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netlens
from netlens.errors import NetlensError


class Sliced(nn.Module):
    """A 4-wide head whose forward drops the last class."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))[:, :3]


def test_names_for_the_outputs_a_sliced_head_returns_are_taken() -> None:
    torch.manual_seed(0)
    model = Sliced().eval()
    lens = netlens.load(model, classes=["a", "b", "c"])
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = model(x).argmax(1)
    assert lens.predict(x).shape == (2, 3)
    assert [lens.classes[int(i)] for i in want] == [lens.class_name(int(i)) for i in want]


def test_a_wrong_count_without_an_input_size_is_refused_at_the_first_forward() -> None:
    lens = netlens.load(Sliced().eval(), classes=["a", "b", "c", "d"])
    with pytest.raises(NetlensError, match="3 outputs but 4 class names"):
        lens.predict(torch.randn(1, 3, 16, 16))


def test_a_wrong_count_with_an_input_size_is_refused_when_loading() -> None:
    with pytest.raises(NetlensError, match="4 class names given but the model has 3 outputs"):
        netlens.load(Sliced().eval(), classes=["a", "b", "c", "d"], input_size=16)

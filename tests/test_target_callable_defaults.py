"""A target function whose extra parameters have defaults (a class bound in a loop with
``c=c``, ``functools.partial``) is called with the output alone; one that asks for ``rows``
gets each row's image."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import netlens


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()


def _logit(o: torch.Tensor, cls: int) -> torch.Tensor:
    return o[:, cls]


@pytest.mark.parametrize(
    "fn",
    [
        lambda o, c=3: o[:, c],
        lambda o, c=3: o[torch.arange(len(o)), c],
        functools.partial(_logit, cls=3),
    ],
    ids=["default", "arange-default", "partial"],
)
def test_a_bound_class_explains_that_class(fn) -> None:
    model, x = _model(), torch.randn(2, 3, 16, 16)
    want = netlens.cam(model, x, method="gradcam", layer="0", target=3).heatmaps
    got = netlens.cam(model, x, method="gradcam", layer="0", target=fn).heatmaps
    assert torch.allclose(torch.as_tensor(got), torch.as_tensor(want))


def test_rows_by_name_and_by_position() -> None:
    model, x = _model(), torch.randn(2, 3, 16, 16)
    want = netlens.cam(model, x, method="gradcam", layer="0", target=[1, 4]).heatmaps
    pick = torch.tensor([1, 4])
    for fn in (
        lambda o, rows: o[torch.arange(len(o)), pick[rows]],
        lambda o, rows=None: o[torch.arange(len(o)), pick[rows]],
    ):
        got = netlens.cam(model, x, method="gradcam", layer="0", target=fn).heatmaps
        assert torch.allclose(torch.as_tensor(got), torch.as_tensor(want))

"""The channel-ablation figure names each bar by its channel number (not its rank) and lists
only the classes that have images."""

from __future__ import annotations

import torch
from torch import nn

import netlens


def test_bars_are_named_by_channel_and_the_legend_by_classes_with_images() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()
    model[4].weight.data *= 10
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 4
    res = netlens.ablate(
        model, (x, y), layers="0", channels=[0, 5, 7, 2], metric="kl", progress=False
    )
    value = {r["channel"]: r["value"] for r in res.rows if r["kind"] == "channel"}
    by_harm = [str(c) for c in sorted(value, key=lambda c: -value[c])]
    fig = res.figures()["ablation-channels"]
    bars, _, per_class = fig.axes[:3]
    assert [t.get_text() for t in bars.get_xticklabels()] == by_harm
    intact = res.arrays["curve_importance_classes"][0]
    with_images = [str(c) for c in range(len(intact)) if intact[c] == intact[c]]  # not NaN
    assert [t.get_text() for t in per_class.get_legend().get_texts()] == with_images

"""A multi-label model's ablation read through its labels' sigmoids, against a naive loop."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import netlens
from netlens.cli.app import app
from netlens.errors import AnalyzerError


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
        nn.Sigmoid(),
    ).eval()  # fmt: skip  (ends in a sigmoid over several outputs: multi-label)


def _naive(model: nn.Module, x: torch.Tensor, unit: str, metric: str) -> float:
    """The unit's output zeroed by a hook; the metric from the logits σ⁻¹(p), by hand."""
    with torch.no_grad():
        b = torch.logit(model(x).double())
        hook = model.get_submodule(unit).register_forward_hook(lambda m, i, o: torch.zeros_like(o))
        z = torch.logit(model(x).double())
        hook.remove()
    p, q = torch.sigmoid(b), torch.sigmoid(z)
    if metric == "kl":
        kl = p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()
        return kl.sum(1).mean().item()
    if metric == "agreement":
        return ((z > 0) == (b > 0)).double().mean().item()
    picked = (b > 0).double()
    return ((q * picked).sum(1) / picked.sum(1)).mean().item()


@pytest.mark.parametrize("metric", ["kl", "agreement", "prob"])
def test_label_free_metrics_read_the_labels_sigmoids(metric: str) -> None:
    model = _net()
    with torch.no_grad():
        model[6].bias.copy_(torch.tensor([2.0, 2.0, -0.5, 1.0, 3.0]))  # every image: some labels
    x = torch.randn(12, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    lens = netlens.load(model, size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert lens.task_for(lens.output(x[:1])) == "multilabel"
    r = netlens.ablate(lens, x, layers="0,2", metric=metric, mode="zero", progress=False)
    for row in r.rows:
        assert row["value"] == pytest.approx(_naive(model, x, row["key"], metric), rel=1e-5)
        assert row["hurt_classes"] is None  # labels are not one class per image
    assert r.meta["task"] == "multilabel" and r.meta["per_class"] is None


def test_label_metrics_are_refused_for_a_multi_label_model(tmp_path) -> None:
    model = _net()
    x = torch.randn(4, 3, 16, 16)
    lens = netlens.load(model, size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(AnalyzerError, match="use --metric kl, agreement or prob"):
        netlens.ablate(lens, (x, torch.zeros(4).long()), layers="0", progress=False)
    path = tmp_path / "ml.pt"
    torch.save(model, path)
    out = tmp_path / "o"
    res = CliRunner().invoke(
        app,
        ["ablate", str(path), "--trust", "--input-size", "16", "--mean", "0.5", "--std", "0.5",
         "--data", "shapes", "--limit", "8", "--metric", "kl", "--layers", "0,2", "--mode", "zero",
         "--out",
         str(out), "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "ablation.json").read_text())
    assert doc["task"] == "multilabel" and len(doc["table"]) == 3  # the baseline and two units
    assert (out / "ablation.png").exists()

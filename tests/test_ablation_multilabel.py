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
    assert r.meta["task"] == "multilabel"


def test_most_hurt_labels_are_the_labels_the_ablated_model_drops() -> None:
    """Per label: of the images the intact model gives it, the share the ablated one still
    gives it (one class per image would be meaningless for independent labels)."""
    model = _net()
    with torch.no_grad():
        model[6].bias.add_(torch.tensor([0.0, -0.1, 0.0, 0.0, 0.1]))  # labels 1, 4 fall
    x = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    names = ["person", "car", "dog", "tree", "sky"]
    lens = netlens.load(model, size=16, mean=(0.5,) * 3, std=(0.5,) * 3, classes=names)
    r = netlens.ablate(lens, x, layers="0,2", metric="kl", mode="zero", progress=False)
    assert r.meta["per_class"] == "kept by intact label"
    for row in r.rows:
        with torch.no_grad():
            b = model(x) > 0.5
            hook = model.get_submodule(row["key"]).register_forward_hook(
                lambda m, i, o: torch.zeros_like(o)
            )
            z = model(x) > 0.5
            hook.remove()
        given = b.sum(0)
        kept = (b & z).sum(0).double() / given.clamp(min=1)
        fall = [(1.0 - kept[c].item(), c) for c in range(5) if given[c] > 0 and kept[c] < 1]
        expected = [names[c] for _, c in sorted(fall, key=lambda t: (-t[0], t[1]))[:3]]
        assert [h["class"] for h in row["hurt_classes"]] == expected
        assert expected, "the test needs an ablation that drops labels"
        for h in row["hurt_classes"]:
            c = names.index(h["class"])
            assert h["before"] == 1.0 and h["after"] == pytest.approx(kept[c].item(), abs=1e-4)


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

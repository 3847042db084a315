"""The sanity verdict carries the 95 % CI of its final Spearman over the images, and says when
that CI spans the threshold (other images could flip it) — checked against an independent
percentile bootstrap of the per-image Spearman values the result stores. Steps that share a
tied parameter are named in the warnings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import netlens
from netlens.analyzers.sanity import verdict_text

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore")]


def naive_ci(values: np.ndarray, seed: int, resamples: int = 2000) -> tuple[float, float]:
    """Percentile bootstrap of the mean (the same resampling rule, written here from scratch):
    only its agreement to about the resampling noise is asserted."""
    rng = np.random.default_rng(seed + 1)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    means = values[idx].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def test_verdict_reports_the_ci_of_the_final_spearman() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()  # fmt: skip
    lens = netlens.load(net, input_size=32, classes=["a", "b", "c"])
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(6, 3, 32, 32, generator=g) * 255).to(torch.uint8)
    res = lens.run("sanity", x, method="gradcam", layer="2", seed=3)
    v = res.verdicts["gradcam"]
    final = res.arrays["gradcam/spearman"][-1]
    lo, hi = naive_ci(final, 3)
    assert v["final_spearman_low"] <= v["final_spearman"] <= v["final_spearman_high"]
    spread = float(final.std()) / np.sqrt(len(final))
    assert abs(v["final_spearman_low"] - lo) < 0.5 * spread + 1e-9
    assert abs(v["final_spearman_high"] - hi) < 0.5 * spread + 1e-9
    text = v["verdict"]
    assert f"95 % CI [{v['final_spearman_low']:.2f}, {v['final_spearman_high']:.2f}]" in text
    assert v["settled"] == (not (v["final_spearman_low"] < 0.5 <= v["final_spearman_high"]))


def test_a_ci_across_the_threshold_is_called_not_settled() -> None:
    spans = verdict_text(True, 0.41, 0.5, ci=(0.2, 0.63))
    assert spans.startswith("passes:")
    assert "95 % CI [0.20, 0.63]" in spans and "not settled" in spans
    clear = verdict_text(False, 0.81, 0.5, ci=(0.7, 0.9))
    assert clear.startswith("FLAGGED") and "not settled" not in clear
    assert "CI" not in verdict_text(True, 0.1, 0.5)  # no CI given: none printed


class Tied(nn.Module):
    """Two convolutions sharing one weight Parameter (tied), as weight-tied models do."""

    def __init__(self, tie: bool = True) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 8, 3, padding=1)
        self.mid2 = nn.Conv2d(8, 8, 3, padding=1)
        if tie:
            self.mid2.weight = self.mid.weight
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.mid2(torch.relu(self.mid(torch.relu(self.stem(x))))))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("tie", [True, False])
def test_tied_weights_across_steps_are_named(tie: bool) -> None:
    """Randomising the upper of two tied layers re-draws the lower one too: said, not silent."""
    torch.manual_seed(0)
    model = Tied(tie).eval()
    lens = netlens.load(model, input_size=32, classes=["a", "b", "c"])
    x = (torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).byte()
    res = lens.run("sanity", x, method="gradcam", layer="mid")
    assert res.meta["steps"] == ["fc", "mid2", "mid", "stem"]
    tied = [w for w in res.meta["warnings"] if "also re-initialises" in w]
    if tie:
        assert tied == [
            "sanity: step 'mid2' also re-initialises step 'mid' (they share mid.weight = "
            "mid2.weight): from step 2 on, 'mid' is random too"
        ]
    else:
        assert tied == []

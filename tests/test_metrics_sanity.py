"""Spearman and SSIM against hand-checked values; cascade grouping and the edge-map flag."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netlens.metrics.randomization import (
    ROOT_STEP,
    cascade_blocks,
    cascading_randomization,
    gaussian_window,
    spearman,
    ssim,
)


def test_spearman_hand_cases() -> None:
    a = np.array([[[1.0, 2.0], [3.0, 4.0]]])
    b = np.array([[[1.0, 2.0], [4.0, 3.0]]])
    # 1 - 6·Σd² / (n(n²-1)) with d = (0, 0, 1, 1), n = 4
    assert spearman(a, b) == pytest.approx([1 - 6 * 2 / (4 * 15)])
    assert spearman(a, -a) == pytest.approx([-1.0])
    # ties take average ranks: [1, 2.5, 2.5, 4] vs [1, 2, 3, 4]
    t = np.array([[[1.0, 2.0], [2.0, 5.0]]])
    r = np.array([1, 2.5, 2.5, 4]) - 2.5
    assert spearman(t, a) == pytest.approx(
        [(r * (np.arange(4) - 1.5)).sum() / np.sqrt((r**2).sum() * 5)]
    )
    assert spearman(np.zeros((1, 2, 2)), a).tolist() == [0.0]


def _ssim_loop(a: np.ndarray, b: np.ndarray, size: int = 11) -> float:
    """SSIM by explicit window loops (independent of the conv implementation)."""
    w = gaussian_window(size, 1.5).numpy()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for y in range(a.shape[0] - size + 1):
        for x in range(a.shape[1] - size + 1):
            pa, pb = a[y : y + size, x : x + size], b[y : y + size, x : x + size]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            num = (2 * ma * mb + c1) * (2 * cov + c2)
            vals.append(num / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_hand_checked() -> None:
    a, b = np.full((1, 16, 16), 0.2), np.full((1, 16, 16), 0.6)
    c1 = 0.01**2
    # constant maps: the structure term is 1 and SSIM is the luminance term
    assert ssim(a, b) == pytest.approx([(2 * 0.2 * 0.6 + c1) / (0.04 + 0.36 + c1)])
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 16)), rng.random((16, 16))
    assert ssim(x[None], x[None]) == pytest.approx([1.0])
    assert ssim(x[None], y[None]) == pytest.approx([_ssim_loop(x, y)], abs=1e-9)


def test_cascade_goes_from_the_top_and_deeper_when_needed() -> None:
    flat = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3), nn.Flatten(), nn.LazyLinear(2)
    )
    assert [b for b, _ in cascade_blocks(flat)] == ["4", "2", "0"]
    nested = nn.Sequential()
    nested.add_module(
        "features", nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3))
    )
    nested.add_module("head", nn.Linear(2, 2))
    assert [b for b, _ in cascade_blocks(nested)] == [
        "head",
        "features.2",
        "features.1",
        "features.0",
    ]


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv2(F.relu(self.conv1(x)))).mean(dim=(2, 3)))


def input_gradient(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    xg = x.clone().requires_grad_(True)
    score = model(xg).gather(1, targets[:, None]).sum()
    (g,) = torch.autograd.grad(score, xg)
    return g.abs().sum(dim=1)


def edge_map(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """An "explanation" that ignores the model: Sobel edge magnitude of the input."""
    k = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
    g = x.mean(dim=1, keepdim=True)
    gx, gy = F.conv2d(g, k, padding=1), F.conv2d(g, k.transpose(2, 3), padding=1)
    mag = torch.sqrt(gx**2 + gy**2)
    return (mag / mag.amax(dim=(2, 3), keepdim=True))[:, 0]


def test_edge_detector_is_flagged_and_the_model_untouched() -> None:
    torch.manual_seed(0)
    model = TinyNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(3, 1, 16, 16)
    t = torch.tensor([0, 1, 0])
    edges = cascading_randomization(model, x, t, edge_map)
    assert edges.steps == ["fc", "conv2", "conv1"]
    assert edges.maps.shape == (4, 3, 16, 16)
    assert edges.spearman == pytest.approx(np.ones((3, 3)))
    assert not edges.passes
    grads = cascading_randomization(model, x, t, input_gradient)
    assert grads.final_spearman < edges.final_spearman
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training


def _effective_weights(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every parameter and every layer's weight as the forward uses it (after a forward, so
    hook-based weight/spectral norms have recomputed theirs)."""
    with torch.no_grad():
        model(x)
    out = {k: v.detach().clone() for k, v in model.named_parameters()}
    for n, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor):
            out[f"{n}.weight(effective)"] = w.detach().clone()
    return out


@pytest.mark.parametrize("norm", ["weight_norm", "spectral_norm"])
def test_hook_based_weight_norms_are_copied_and_randomised(norm: str) -> None:
    """The old hook-based norms keep the weight the forward uses as a plain attribute, rebuilt
    from ``weight_g``/``weight_v`` (``weight_orig``): after a forward with gradients it cannot be
    deep-copied, and ``reset_parameters`` alone leaves the rebuilt weight as it was."""
    wrap = getattr(torch.nn.utils, norm)
    torch.manual_seed(0)
    with pytest.warns(FutureWarning) if norm == "weight_norm" else _no_warning():
        model = nn.Sequential(
            wrap(nn.Conv2d(1, 4, 3, padding=1)),
            nn.ReLU(),
            wrap(nn.Conv2d(4, 8, 3, padding=1)),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            wrap(nn.Linear(8, 2)),
        ).eval()  # fmt: skip (eval: spectral_norm's power iteration runs in training mode)
    x = torch.rand(2, 1, 12, 12)
    before = _effective_weights(model, x)
    seen: list[dict[str, torch.Tensor]] = []

    def explain(m: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if m is not model:
            seen.append(_effective_weights(m, x))
        return input_gradient(m, x, t)  # a forward with gradients before the copy is made

    cascading_randomization(model, x, torch.tensor([0, 1]), explain)
    unchanged = [k for k, v in seen[-1].items() if k in before and torch.equal(v, before[k])]
    assert unchanged == []
    after = _effective_weights(model, x)
    assert all(torch.equal(after[k], v) for k, v in before.items())  # the user's model


def _no_warning():
    import contextlib

    return contextlib.nullcontext()


class HeadFirst(nn.Module):
    """Declares its classifier before its features, as hand-written models often do, and
    holds a parameter of its own (a ViT's position embedding)."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Linear(4, 2)
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))
        self.pos = nn.Parameter(torch.randn(1, 1, 8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.relu(self.features(x + self.pos)).mean(dim=(2, 3)))


def test_cascade_follows_the_forward_and_randomises_the_models_own_parameters() -> None:
    torch.manual_seed(0)
    model = HeadFirst().eval()
    x = torch.rand(2, 1, 8, 8)
    assert [b for b, _ in cascade_blocks(model, example=x)] == [
        "classifier",
        "features.1",
        "features.0",
        ROOT_STEP,
    ]
    pos = model.pos.detach().clone()
    copies: list[nn.Module] = []

    def explain(m: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        copies.append(m)
        return input_gradient(m, x, t)

    res = cascading_randomization(model, x, torch.tensor([0, 1]), explain)
    assert res.steps[0] == "classifier" and res.steps[-1] == ROOT_STEP
    assert not torch.equal(copies[-1].pos, pos) and torch.equal(model.pos, pos)


def test_parametrized_weights_are_steps_of_their_layer() -> None:
    """``parametrizations.weight_norm`` puts the weight's parameters in a module of their own
    (``0.parametrizations.weight``): they are randomised with their layer, not as a step."""
    from torch.nn.utils.parametrizations import weight_norm

    net = nn.Sequential(weight_norm(nn.Conv2d(1, 2, 3)), nn.ReLU(), weight_norm(nn.Conv2d(2, 2, 3)))
    blocks = cascade_blocks(net, min_steps=2, example=torch.rand(1, 1, 8, 8))
    assert [b for b, _ in blocks] == ["2", "0"]
    assert blocks[0][1] == ["2", "2.parametrizations.weight"]


def test_bootstrap_bounds_stay_within_the_values() -> None:
    """Summing 0.1 seven times rounds below 0.1, and a mean of correlations of one can round
    above 1; the interval of a mean cannot leave the values it is a mean of."""
    from netlens.metrics.bootstrap import mean_ci

    for values in (np.full(7, 0.1), np.ones(5), np.full(9, 1 / 3)):
        mean, low, high, _ = mean_ci(values)
        assert values.min() <= low <= mean <= high <= values.max()


def test_a_stack_holding_most_of_the_model_is_a_step_per_block() -> None:
    """A ViT's 12 blocks were one step (the cascade of timm's ViT had 4 to 6 steps; its trunk
    randomised at once); Adebayo et al. randomise block by block. A block's own layers stay one
    step, and a ResNet's stages (none holding more than a quarter) are unchanged."""
    import timm

    from netlens.metrics.randomization import cascade_blocks

    vit = [s for s, _ in cascade_blocks(timm.create_model("vit_tiny_patch16_224", depth=4))]
    assert vit[:6] == ["head", "norm", "blocks.3", "blocks.2", "blocks.1", "blocks.0"]
    swin = timm.create_model("swin_tiny_patch4_window7_224", depths=(2, 2, 2, 2))
    assert [s for s, _ in cascade_blocks(swin)][2:6] == [f"layers.{k}" for k in (3, 2, 1, 0)]
    resnet = [s for s, _ in cascade_blocks(timm.create_model("resnet18"))]
    assert resnet == ["fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1"]

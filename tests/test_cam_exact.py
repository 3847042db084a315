"""Score-CAM and Ablation-CAM skip passes but equal the plain algorithms (written out here)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netlens


def dup_dead_net() -> nn.Module:
    """conv → ReLU → conv(8) → ReLU → GAP → linear, whose 8 layer channels repeat and die.

    Channels 1 and 2 are copies of channel 0 (2 scaled by 3: the same min-max mask), 3 and 4
    are always zero after the ReLU (large negative bias), the others are distinct.
    """
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    with torch.no_grad():
        conv = net[2]
        conv.bias[0] = 0.2
        conv.weight[1] = conv.weight[0]
        conv.bias[1] = conv.bias[0]
        conv.weight[2] = 4 * conv.weight[0]  # a power of two: exactly 4× channel 0
        conv.bias[2] = 4 * conv.bias[0]
        conv.bias[3:5] = -1e3
        net[6].weight.mul_(5.0)
    return net.eval()


Score = Callable[[torch.Tensor], torch.Tensor]


def plain_scorecam(
    model: nn.Module, x: torch.Tensor, layer: nn.Module, target: int | Score
) -> np.ndarray:
    """Score-CAM as in the paper, one masked pass per channel (no skipping); ``target`` a class
    or a function of the output."""
    score = target if callable(target) else lambda out: out[0, target]
    store: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: store.append(o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    acts = store[0][0]  # C×h×w
    scores = []
    for a in acts:
        up = F.interpolate(a[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
        lo, hi = up.min(), up.max()
        mask = (up - lo) / (hi - lo) if hi > lo else torch.zeros_like(up)
        with torch.no_grad():
            scores.append(score(model(x * mask)))
    w = torch.softmax(torch.stack(scores), dim=0)
    cam = torch.relu((w[:, None, None] * acts).sum(0))
    up = F.interpolate(cam[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
    return ((up - up.min()) / (up.max() - up.min()))[0, 0].numpy()


def plain_ablationcam(
    model: nn.Module, x: torch.Tensor, layer: nn.Module, target: int | Score
) -> np.ndarray:
    """Ablation-CAM with the whole model re-run for every zeroed channel."""
    score = target if callable(target) else lambda out: out[0, target]
    store: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: store.append(o.detach()))
    with torch.no_grad():
        base = score(model(x))
    handle.remove()
    acts = store[0][0]
    weights = []
    for k in range(len(acts)):

        def zero(m: nn.Module, i: object, o: torch.Tensor, k: int = k) -> torch.Tensor:
            o = o.clone()
            o[:, k] = 0
            return o

        handle = layer.register_forward_hook(zero)
        with torch.no_grad():
            weights.append((base - score(model(x))) / (base.abs() + 1e-7))
        handle.remove()
    cam = torch.relu((torch.stack(weights)[:, None, None] * acts).sum(0))
    up = F.interpolate(cam[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
    return ((up - up.min()) / (up.max() - up.min()))[0, 0].numpy()


def test_scorecam_skips_repeated_and_empty_masks_and_equals_the_plain_algorithm() -> None:
    net = dup_dead_net()
    x = torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(1)) - 0.3
    calls: list[int] = []
    net.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    got = netlens.cam(net, x, method="scorecam", layer="3", top=2, batch_size=4)
    assert calls[:2] == [1, 3]  # the output check (a sigmoid's?), then the capture
    assert sum(calls[2:]) == 3 * 4 + 1  # 4 distinct masks per image, 1 empty
    for i in range(3):
        for j in range(2):
            ref = plain_scorecam(net, x[i : i + 1], net[3], int(got.targets[i, j]))
            np.testing.assert_allclose(got.heatmaps[i, j], ref, atol=1e-5)


def test_ablationcam_skips_dead_channels_and_equals_the_plain_algorithm() -> None:
    net = dup_dead_net()
    x = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(2)) - 0.3
    got = netlens.cam(net, x, method="ablationcam", layer="3", target=[1, 3], batch_size=3)
    for i, t in enumerate([1, 3]):
        ref = plain_ablationcam(net, x[i : i + 1], net[3], t)
        np.testing.assert_allclose(got.heatmaps[i], ref, atol=1e-5)


def test_dense_outputs_are_scored_per_batch_and_equal_the_plain_algorithms() -> None:
    # a segmentation net: each pass's K×H×W output is scored as its batch returns, not kept
    net = dup_dead_net()
    seg = nn.Sequential(*net[:4], nn.Conv2d(8, 3, 1), nn.Upsample(scale_factor=2)).eval()
    with torch.no_grad():  # class 1 where channel 6 is above 0.07, else class 0
        seg[4].weight.zero_()
        seg[4].bias.zero_()
        seg[4].weight[1, 6] = 50.0
        seg[4].bias[0] = 3.5
    x = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(4)) - 0.3
    with torch.no_grad():
        pred = seg(x).argmax(1)
    for method, plain in (("scorecam", plain_scorecam), ("ablationcam", plain_ablationcam)):
        got = netlens.cam(seg, x, method=method, layer="3", batch_size=3, target="region:1")
        assert got.meta["task"] == "dense"
        for i in range(2):
            c = int(got.arrays["targets"][i, 0])
            region = pred[i] == c
            assert 0 < int(region.sum()) < region.numel()

            def score(out: torch.Tensor, c: int = c, region: torch.Tensor = region) -> torch.Tensor:
                return (out[0, c] * region).sum()

            ref = plain(seg, x[i : i + 1], seg[3], score)
            assert ref.std() > 0.05
            np.testing.assert_allclose(got.heatmaps[i], ref, atol=1e-5)


def test_scorecam_on_a_resnet_equals_the_plain_algorithm_through_the_fast_path() -> None:
    # 256 masked passes: the batches run on threads through the conv+BN-folded copy.
    from test_cam_reference import randomized_resnet18

    model = randomized_resnet18()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    got = netlens.cam(model, x, method="scorecam", layer="layer3", target=2, batch_size=40)
    ref = plain_scorecam(model, x, model.layer3, 2)
    assert ref.std() > 0.1
    np.testing.assert_allclose(got.heatmaps[0], ref, atol=1e-5)


def test_scorecam_shares_a_pass_only_between_bit_identical_masks() -> None:
    from netlens.analyzers.cam_base import CamContext
    from netlens.analyzers.cam_methods import _distinct_masks, _score_masks

    # a + 0.3 normalises to exactly a's map at 5×5, but its 17×17 mask is a rounding apart
    a = torch.rand(5, 5, generator=torch.Generator().manual_seed(17))
    acts = torch.stack([a, a + 0.3, a.clone(), torch.full_like(a, 2.0)])[None]
    x = torch.zeros(1, 3, 17, 17)
    ctx = CamContext(nn.Identity(), x, "l", acts, None, None, x[:, 0, 0], lambda t: t)  # type: ignore[arg-type]
    masks = _score_masks(ctx, torch.tensor([[0, 0], [0, 1]]))
    assert not torch.equal(masks[0], masks[1]) and (masks[0] - masks[1]).abs().max() < 1e-6
    pairs, rows = _distinct_masks(ctx)
    assert rows.tolist() == [[0, 1, 0, -1]]  # the copy shares channel 0's pass; constant: empty
    assert pairs.tolist() == [[0, 0], [0, 1]]


def test_ablationcam_runs_the_layers_before_the_ablated_one_on_one_image_per_batch() -> None:
    # The zeroed copies are swapped in at the layer, so the stem sees one image per batch of
    # channels, not one copy per channel (the full-model fallback, 10-20× slower); and the
    # logits read from the copies give the plain algorithm's map.
    from test_cam_reference import randomized_resnet18

    model = randomized_resnet18()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    stem: list[int] = []
    handle = model.conv1.register_forward_hook(lambda m, i, o: stem.append(o.shape[0]))
    try:
        got = netlens.cam(model, x, method="ablationcam", layer="layer4", target=3, batch_size=64)
    finally:
        handle.remove()
    assert max(stem) == 1, stem  # 512 channels in batches of 64: never 64 stem images
    ref = plain_ablationcam(model, x, model.layer4, 3)
    assert ref.std() > 0.1
    np.testing.assert_allclose(got.heatmaps[0], ref, atol=1e-5)


class _ViewNet(nn.Module):
    """A hand-written CNN flattening with ``x.view(n, -1)``: channels-last activations refuse."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 160, 3, 2, 1), nn.BatchNorm2d(160)
        self.fc = nn.Linear(160 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
        return self.fc(x.view(x.size(0), -1))


def test_scorecam_folds_a_model_that_flattens_with_view_and_prints_no_fx_traceback(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # Channels-last weights make every activation channels-last, whatever the input's layout,
    # so the copy's x.view raised and the folded copy was dropped, with fx's traceback printed
    # to stderr; the copy now keeps standard-layout weights for such a model.
    from netlens.analyzers import cam_base

    torch.manual_seed(0)
    net = _ViewNet()
    with torch.no_grad():
        for bn in (net.b1, net.b2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    net.eval()
    made: list[bool] = []
    original = cam_base._fused_copy
    monkeypatch.setattr(
        cam_base, "_fused_copy", lambda *a: made.append(original(*a) is not None) or original(*a)
    )
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    got = netlens.cam(net, x, method="scorecam", layer="b2", target=3, batch_size=64)
    assert made and all(made), made
    assert "Traceback" not in capfd.readouterr().err
    ref = plain_scorecam(net, x, net.b2, 3)
    assert ref.std() > 0.05
    np.testing.assert_allclose(got.heatmaps[0], ref, atol=1e-5)

"""Deletion/insertion on a toy model whose decision depends on a known region only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from netlens.metrics.deletion import Deletion, Insertion, blurred, perturbation_curves
from netlens.metrics.perturb import auc, pixel_ranks

SIZE, LO, HI = 32, 8, 16


class RegionModel(nn.Module):
    """Class 1 when the mean of channel 0 inside the region is high, class 0 otherwise."""

    def __init__(self) -> None:
        super().__init__()
        region = torch.zeros(SIZE, SIZE)
        region[LO:HI, LO:HI] = 1.0
        self.register_buffer("region", region / region.sum())
        self.scale = nn.Parameter(torch.tensor(20.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x[:, 0] * self.region).sum(dim=(1, 2))
        z = self.scale * (s - 0.5)
        return torch.stack([-z, z], dim=1)


def toy_batch(n: int = 3) -> tuple[torch.Tensor, np.ndarray]:
    gen = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(n, 3, SIZE, SIZE, generator=gen)
    x[:, :, LO:HI, LO:HI] += 1.0
    good = np.zeros((n, SIZE, SIZE), np.float32)
    good[:, LO:HI, LO:HI] = 1.0
    good += 0.05 * np.random.default_rng(0).random(good.shape).astype(np.float32)
    return x, good


def test_auc_is_the_trapezoid() -> None:
    assert auc(np.array([[1.0, 0.0]])) == pytest.approx([0.5])
    assert auc(np.array([[1.0, 1.0, 0.0]])) == pytest.approx([0.75])


def test_pixel_ranks_order_by_relevance() -> None:
    h = np.array([[0.1, 0.9], [0.5, 0.3]])
    assert pixel_ranks(h).tolist() == [[3, 0], [1, 2]]


def test_deletion_ordering_region_beats_random_beats_inverted() -> None:
    model = RegionModel()
    x, good = toy_batch()
    targets = [1, 1, 1]
    kw = dict(steps=16, batch_size=17)
    on = Deletion()(model, x, good, targets, **kw)
    off = Deletion()(model, x, 1.0 - good, targets, **kw)
    assert on["curve"].shape == (3, 17)
    assert on["curve"][:, 0] == pytest.approx(off["curve"][:, 0])  # same start: the full image
    assert on["score"].mean() < on["baseline"].mean() < off["score"].mean()
    assert on["score"].mean() < 0.15 and off["score"].mean() > 0.8


def test_insertion_ordering_region_beats_random_beats_inverted() -> None:
    model = RegionModel()
    x, good = toy_batch()
    on = Insertion()(model, x, good, [1, 1, 1], steps=16)
    off = Insertion()(model, x, 1.0 - good, [1, 1, 1], steps=16)
    assert on["score"].mean() > on["baseline"].mean() > off["score"].mean()
    assert on["score"].mean() > 0.8


def test_steps_are_batched_into_forward_passes() -> None:
    calls: list[int] = []
    model = RegionModel()
    model.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    x, good = toy_batch(2)
    perturbation_curves(model, x, good, [1, 1], steps=9, batch_size=4)
    assert calls == [4] * 5  # 10 step images per image, both images in full chunks of 4
    assert Deletion().cost(2, steps=9) == 2 * 10 * 2


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_batched_curves_equal_a_loop_over_images_and_steps(mode: str) -> None:
    model = RegionModel()
    x, good = toy_batch(3)
    heat = good + 0.3 * np.random.default_rng(1).random(good.shape).astype(np.float32)
    got = perturbation_curves(model, x, heat, [1, 0, 1], mode=mode, steps=6, batch_size=5)
    start, end = (x, torch.zeros_like(x)) if mode == "deletion" else (blurred(x), x)
    hw = x.shape[-2] * x.shape[-1]
    for i in range(3):
        ranks = torch.as_tensor(pixel_ranks(heat[i], seed=i))
        for k, n in enumerate(np.linspace(0, hw, 7).round().astype(int)):
            img = torch.where(ranks < int(n), end[i], start[i])
            with torch.no_grad():
                p = torch.softmax(model(img[None]), dim=1)[0, [1, 0, 1][i]]
            assert got[i, k] == pytest.approx(float(p), rel=1e-5, abs=1e-7)


def test_user_model_is_left_as_it_was() -> None:
    model = RegionModel().train()
    x, good = toy_batch(1)
    Deletion()(model, x, good, [1], steps=4)
    assert model.training and model.scale.grad is None


@pytest.mark.parametrize(
    ("shape", "kernel"), [((2, 3, 64, 64), 11), ((1, 1, 28, 28), 11), ((3, 3, 7, 9), 5)]
)
def test_the_blur_is_torchvisions_without_importing_it(shape, kernel) -> None:  # noqa: ANN001
    from torchvision.transforms.functional import gaussian_blur as reference

    from netlens.metrics.deletion import gaussian_blur

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    expected = reference(x, [kernel, kernel], [5.0, 5.0])
    torch.testing.assert_close(gaussian_blur(x, kernel, 5.0), expected, rtol=1e-6, atol=1e-7)


def test_zero_fill_is_the_same_colour_wherever_the_normalisation_lives() -> None:
    """ "zero" is the mean colour of normalised inputs; a model that normalises its input itself
    (``Sequential(Normalize(m, s), net)``, fed pixels) had black as its "zero": the same network
    scored 0.133 against 0.277 on the zoo's Fashion-MNIST model."""
    from torchvision import transforms

    mean, std = (0.3, 0.5, 0.7), (0.25, 0.2, 0.3)
    net = RegionModel()
    inside = nn.Sequential(transforms.Normalize(mean, std), net).eval()
    x, good = toy_batch()
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    pixels = x * s + m  # what the model with its own normaliser is fed
    targets = [1, 1, 1]
    outside = perturbation_curves(net, x, good, targets)
    within = perturbation_curves(inside, pixels, good, targets)
    np.testing.assert_allclose(within, outside, atol=1e-5)
    plain = perturbation_curves(net, pixels, good, targets)  # no normaliser: zero stays zero
    assert not np.allclose(plain, within, atol=1e-3)

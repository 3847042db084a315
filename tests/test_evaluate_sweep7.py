"""evaluate: a user's Subset and sampler, repeated names, flat maps and negligible targets,
masks of a fresh lens's tensors, ROAD noise units and the planned forward passes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, SubsetRandomSampler

import netlens
from netlens.analyzers.evaluate import names
from netlens.data import ArrayDataset
from netlens.errors import DataError

torch.set_num_threads(1)
SIZE, N = 20, 9
CLASSES = ["red", "green", "blue"]
MEAN, STD = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)


class Net(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class ImageNormalizer(nn.Module):
    """RobustBench's first layer: the model normalises its own input (pixels in [0, 1])."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def data(n: int = N, seed: int = 0) -> ArrayDataset:
    """Noisy images with a coloured square (the class) and its mask, each in another place."""
    rng = np.random.default_rng(seed)
    images = rng.normal(120, 30, (n, SIZE, SIZE, 3)).clip(0, 255).astype(np.uint8)
    labels = np.arange(n) % 3
    masks = np.zeros((n, SIZE, SIZE), bool)
    for i in range(n):
        y, x = rng.integers(0, SIZE - 6, 2)
        images[i, y : y + 6, x : x + 6] = np.roll([230, 40, 40], labels[i])
        masks[i, y : y + 6, x : x + 6] = True
    return ArrayDataset(images, labels, CLASSES, masks=masks)


def load(model: nn.Module) -> netlens.Lens:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return netlens.load(model, classes=CLASSES)


def energy(heat: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map inside the mask (NaN for an all-zero map)."""
    h = np.clip(np.asarray(heat, np.float64), 0, None)
    return float((h * mask).sum() / h.sum()) if h.sum() > 0 else float("nan")


def stacked(ds, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    return torch.stack([ds[i][0] for i in idx]), torch.tensor([int(ds[i][1]) for i in idx])


def test_a_users_subset_is_scored_with_its_own_items_and_masks() -> None:
    """evaluate unwrapped any Subset as if it were --limit's cut: Subset(ds, [7, 2, 5]) scored
    images 0-2 of ds, and the masks of a user's Subset could not be found at all."""
    ds, lens, pick = data(), load(Net()), [7, 2, 5]
    res = lens.evaluate(Subset(ds, pick), methods="gradcam", metrics="energy,deletion", steps=4)
    assert res.meta["images"] == 3
    x, y = stacked(ds, pick)
    heat = np.asarray(lens.cam(x, method="gradcam", target=y.tolist()).heatmaps)
    want = [energy(heat[k], ds.mask(i)) for k, i in enumerate(pick)]
    np.testing.assert_allclose(res.arrays["gradcam/energy/score"], want, atol=1e-5)
    pair = lens.evaluate((x, y), methods="gradcam", metrics="deletion", steps=4)
    got = res.arrays["gradcam/deletion/score"]
    np.testing.assert_allclose(got, pair.arrays["gradcam/deletion/score"], atol=1e-6)
    cut = lens.evaluate(Subset(ds, pick), methods="gradcam", metrics="energy", limit=2)
    np.testing.assert_allclose(cut.arrays["gradcam/energy/score"], want[:2], atol=1e-5)


def test_repeated_method_and_metric_names_count_once() -> None:
    """-m gradcam,gradcam and --metric deletion,deletion scored every image twice and pooled
    the copies: n doubled and the confidence interval narrowed."""
    assert names("gradcam, gradcam,eigencam,gradcam") == ["gradcam", "eigencam"]
    ds, lens = data(6), load(Net())
    kw = {"steps": 4, "random_baseline": False}
    one = lens.evaluate(ds, methods="gradcam", metrics="deletion", **kw)
    two = lens.evaluate(ds, methods="gradcam,gradcam", metrics="deletion,deletion", **kw)
    assert len(two.table) == 1 and two.table[0]["n"] == one.table[0]["n"] == 6
    assert two.arrays["gradcam/deletion/score"].shape == (6,)
    assert two.table[0]["ci_low"] == one.table[0]["ci_low"]


def test_flat_maps_and_negligible_targets_are_warned_about_for_deletion() -> None:
    """All-zero maps (pixels taken in random order) and targets the model gives almost no
    probability made deletion look excellent without a word; only pointing and energy warned."""
    model = Net()
    with torch.no_grad():
        model.fc.weight[0] = -model.fc.weight[0].abs() - 0.1  # red: only negative evidence
        model.fc.bias[0] = -30.0  # and a negligible probability
    ds, lens = data(), load(model)
    res = lens.evaluate(ds, methods="gradcam", metrics="deletion,road-morf", steps=4)
    x, y = stacked(ds, list(range(N)))
    heat = np.asarray(lens.cam(x, method="gradcam", target=y.tolist()).heatmaps)
    flat = int(sum(h.max() == h.min() for h in heat))
    weak = int((lens.predict(x)[torch.arange(N), y] < 1 / 30).sum())
    assert flat >= 1 and weak == 3  # the red images
    assert res.meta["flat_maps"] == {"gradcam": flat}
    assert res.meta["negligible_targets"] == weak
    lines = res.meta["warnings"]
    assert any(
        line.startswith(f"gradcam: {flat} of {N} map(s) are flat") and "random order" in line
        for line in lines
    ), lines
    assert any(
        f"{weak} of {N} image(s) have a target of negligible probability" in line for line in lines
    ), lines
    healthy = load(Net()).evaluate(ds, methods="gradcam", metrics="deletion", steps=4)
    assert not any("negligible" in line for line in healthy.meta["warnings"])


def test_masks_of_a_triple_on_a_fresh_lens_are_checked_against_the_images() -> None:
    """A model that records no input size refused (images, labels, masks): 'the input size of
    this model is unknown ... or give images', though the images were given."""
    ds = data(6)
    x, y = stacked(ds, list(range(6)))
    masks = np.stack([ds.mask(i) for i in range(6)])
    lens = load(Net())
    res = lens.evaluate((x, y, masks), methods="gradcam", metrics="energy")
    heat = np.asarray(lens.cam(x, method="gradcam", target=y.tolist()).heatmaps)
    want = [energy(h, m) for h, m in zip(heat, masks, strict=True)]
    np.testing.assert_allclose(res.arrays["gradcam/energy/score"], want, atol=1e-5)
    with pytest.raises(DataError, match=f"{SIZE}×{SIZE}"):
        load(Net()).evaluate((x, y, masks[:, :10, :10]), methods="gradcam", metrics="energy")


def test_road_noise_does_not_depend_on_where_the_normalisation_lives() -> None:
    """ROAD's noise was added in the model's input units: pixels for a model that normalises
    its own input, normalised values otherwise, so the two scored differently."""
    rng = np.random.default_rng(3)
    pixels = torch.from_numpy(rng.random((4, 3, 16, 16)).astype(np.float32))
    y = torch.tensor([0, 1, 2, 0])
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    net = Net(seed=1).eval()
    kw = {"methods": "gradcam", "metrics": "road-morf,road-lerf", "fractions": (0.3, 0.6)}
    kw |= {"noise": 0.5, "random_baseline": False}
    outside = load(net).evaluate(((pixels - mean) / std, y), **kw)
    inside = load(nn.Sequential(ImageNormalizer(MEAN, STD), net).eval()).evaluate((pixels, y), **kw)
    for key in ("gradcam/road-morf/score", "gradcam/road-lerf/score"):
        np.testing.assert_allclose(inside.arrays[key], outside.arrays[key], atol=1e-4)


def test_planned_forward_passes_are_the_passes_run_with_both_road_metrics() -> None:
    """road-lerf reuses the random baseline road-morf computed (for every method), but the
    plan charged it for each metric and method: 8 passes per image and fraction planned, 5 run."""
    ds, lens = data(4), load(Net())
    res = lens.evaluate(
        ds, methods="gradcam,eigencam", metrics="road-morf,road-lerf", fractions=(0.3, 0.6)
    )
    assert res.meta["forward_passes"] == res.meta["planned_forward_passes"] == 4 * 2 * 5


def test_a_users_sampler_counts_the_images_it_draws() -> None:
    """A DataLoader with SubsetRandomSampler([5, 6, 7]) scored 3 images but reported the
    dataset's 12: in the headline, meta['images'] and the cost per image."""
    ds, lens = data(12), load(Net())
    loader = DataLoader(ds, batch_size=2, sampler=SubsetRandomSampler([5, 6, 7]))
    res = lens.evaluate(
        loader, methods="gradcam", metrics="deletion", steps=4, random_baseline=False
    )
    assert res.meta["images"] == 3 and res.arrays["gradcam/deletion/score"].shape == (3,)
    assert res.headline().startswith("evaluate over 3 images")
    assert res.meta["cost_per_image"]["deletion"]["forward_passes"] == 5
    x, y = stacked(ds, [5, 6, 7])
    want = lens.evaluate(
        (x, y), methods="gradcam", metrics="deletion", steps=4, random_baseline=False
    ).arrays["gradcam/deletion/score"]
    got = res.arrays["gradcam/deletion/score"]
    np.testing.assert_allclose(np.sort(got), np.sort(want), atol=1e-3)  # seeds: positions


def test_a_model_that_normalises_its_input_runs_the_passes_planned() -> None:
    import torchvision.transforms as T

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    model = nn.Sequential(T.Normalize((0.5, 0.5, 0.5), (0.2, 0.2, 0.2)), net).eval()
    lens = netlens.load(model, input_size=16)
    x, y = torch.rand(6, 3, 16, 16), torch.arange(6) % 4
    res = lens.run("evaluate", (x, y), metrics="deletion,road-morf", progress=False)
    assert res.meta["forward_passes"] == res.meta["planned_forward_passes"]

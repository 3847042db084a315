"""Top-activating inputs: the right inputs, positions and patches; brute-force check; CLI."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import netlens
from netlens.analyzers.top_activations import gradient_box, merge_top
from netlens.cli.app import app
from netlens.errors import AnalyzerError, NetlensError, NetlensWarning
from netlens.images import Preprocess
from netlens.lens import Lens
from netlens.render.grids import crop_patches, mark_patches
from netlens.testing import assert_model_unchanged, assert_no_hooks


class SpotNet(nn.Module):
    """conv (channel 0: a spot detector, centre 1, ring 0.1; channel 1: its negative) → relu."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(2, 2))
        with torch.no_grad():
            k = torch.full((3, 3), 0.1)
            k[1, 1] = 1.0
            self.conv.weight.copy_(torch.stack([k.expand(3, 3, 3), -k.expand(3, 3, 3)]))
            self.conv.bias.copy_(torch.tensor([0.5, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv(x)))


def spots(n: int = 10, size: int = 12) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Image i: black with one bright pixel of value i+1 at a known place."""
    x = torch.zeros(n, 3, size, size)
    places = [((3 * i) % (size - 2) + 1, (5 * i) % (size - 2) + 1) for i in range(n)]
    for i, (y, xx) in enumerate(places):
        x[i, :, y, xx] = i + 1.0
    return x, torch.zeros(n, dtype=torch.long), places


@pytest.fixture
def spot() -> Lens:
    return Lens(SpotNet().eval(), Preprocess(size=(12, 12)))


def test_finds_the_brightest_spots_where_they_are(spot):
    x, y, places = spots()
    r = spot.run("top-activations", (x, y), layer="conv", k=3, channels=[0], batch_size=4)
    np.testing.assert_array_equal(r.arrays["indices"][0], [9, 8, 7])
    np.testing.assert_allclose(r.arrays["scores"][0], [3 * 10 + 0.5, 3 * 9 + 0.5, 3 * 8 + 0.5])
    for rank, i in enumerate([9, 8, 7]):
        yy, xx = places[i]
        assert tuple(r.arrays["positions"][0, rank]) == (yy, xx)
        # the receptive field of a 3×3 conv unit: the 3×3 neighbourhood of the spot
        assert tuple(r.arrays["boxes"][0, rank]) == (yy - 1, xx - 1, yy + 2, xx + 2)
        assert tuple(r.arrays["cells"][0, rank]) == (yy, xx, yy + 1, xx + 1)
    assert r.arrays["images"].shape == (1, 3, 12, 12, 3)
    assert [row["sample"] for row in r.table] == [9, 8, 7]


def test_scores_equal_a_brute_force_over_stacked_activations(spot):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(21, 3, 12, 12, generator=g), torch.zeros(21, dtype=torch.long)
    r = spot.run("top-activations", (x, y), layer="act", k=4, batch_size=8)
    with torch.no_grad():
        acts = spot.model.act(spot.model.conv(x))
    peaks = acts.flatten(2).max(dim=2).values.T  # channel × sample
    ref = torch.sort(peaks, dim=1, descending=True, stable=True)
    np.testing.assert_allclose(r.arrays["scores"], ref.values[:, :4].numpy(), rtol=1e-6)
    np.testing.assert_array_equal(r.arrays["indices"], ref.indices[:, :4].numpy())
    # default channels: most active first (largest mean peak)
    assert r.meta["channels"] == torch.argsort(peaks.mean(dim=1), descending=True).tolist()


@pytest.mark.parametrize("sampler", ["reversed", "subset"])
def test_a_dataloaders_sampler_order_names_the_right_images(spot, sampler):
    """A DataLoader drawing in its sampler's order (a reversed list, a
    ``SubsetRandomSampler``) had its images numbered by stream position and re-read at those
    positions: the tiles showed other images than the scores'."""
    from torch.utils.data import DataLoader, SubsetRandomSampler, TensorDataset

    x, y, places = spots()
    order = list(range(9, -1, -1)) if sampler == "reversed" else [2, 7, 4, 9, 0]
    chosen = order if sampler == "reversed" else SubsetRandomSampler(order)
    loader = DataLoader(TensorDataset(x, y), batch_size=3, sampler=chosen)
    r = spot.run("top-activations", loader, layer="conv", k=3, channels=[0])
    want = sorted(order, reverse=True)[:3]  # image i's spot is i + 1: the brightest are the last
    np.testing.assert_array_equal(r.arrays["indices"][0], want)
    for rank, i in enumerate(want):
        assert tuple(r.arrays["positions"][0, rank]) == places[i]
        shown = r.arrays["images"][0, rank].astype(float).sum(-1)  # the tile's image: its spot
        assert np.unravel_index(shown.argmax(), shown.shape) == places[i]


def test_a_layer_run_without_gradients_gets_its_cells_as_boxes(spot):
    """A linear probe on a frozen backbone runs it under ``torch.no_grad``: the gradient boxes
    cannot be found, and `top` crashed after its whole pass over the data."""

    class Frozen(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = spot.model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return self.backbone(x)

    lens = Lens(Frozen().eval(), Preprocess(size=(12, 12)))
    x, y, _ = spots()
    with pytest.warns(NetlensWarning, match="without gradients"):
        r = lens.run("top-activations", (x, y), layer="backbone.conv", k=3, channels=[0])
    np.testing.assert_array_equal(r.arrays["indices"][0], [9, 8, 7])
    np.testing.assert_array_equal(r.arrays["boxes"], r.arrays["cells"])


def test_merge_top_and_gradient_box():
    best, ids = torch.tensor([[5.0, 1.0]]), torch.tensor([[0, 1]])
    v, i = merge_top(best, ids, torch.tensor([[3.0, 7.0, 1.0]]), torch.tensor([[2, 3, 4]]), 3)
    assert v.tolist() == [[7.0, 5.0, 3.0]] and i.tolist() == [[3, 0, 2]]
    grad = torch.zeros(3, 10, 10)
    grad[1, 2:5, 6:9] = 1.0
    grad[0, 0, 0] = 0.001  # below 1% of the largest magnitude
    assert gradient_box(grad) == (2, 6, 5, 9)


def test_patches_are_marked_and_cropped_at_true_size():
    imgs = np.arange(2 * 6 * 6 * 3, dtype=np.uint8).reshape(2, 6, 6, 3)
    boxes = np.array([[0, 0, 4, 4], [1, 2, 3, 4]])  # 4×4 and 2×2
    crops = crop_patches(imgs, boxes)
    assert crops.shape == (2, 4, 4, 3)
    np.testing.assert_allclose(crops[0], imgs[0, :4, :4] / 255.0)
    np.testing.assert_allclose(crops[1, 1:3, 1:3], imgs[1, 1:3, 2:4] / 255.0)
    assert np.isnan(crops[1, 0]).all() and np.isnan(crops[1, :, 3]).all()
    marked = mark_patches(imgs, boxes)
    np.testing.assert_allclose(marked[0, 1, 2], imgs[0, 1, 2] / 255.0, rtol=1e-6)  # inside
    np.testing.assert_allclose(marked[0, 5, 5], 0.45 * imgs[0, 5, 5] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(marked[0, 0, 1], [1.0, 0.9, 0.0])  # the outline


def test_model_grads_hooks_and_flags_untouched_and_errors(spot):
    spot.model.train()
    x, y, _ = spots(4)
    before = {k: v.clone() for k, v in spot.model.state_dict().items()}
    r = spot.run("top-activations", (x, y), layer="conv", k=2)
    assert set(r.figures()) == {"top-conv", "top-conv-patches"}
    assert spot.model.training
    assert all(p.grad is None for p in spot.model.parameters())
    assert all(torch.equal(before[k], v) for k, v in spot.model.state_dict().items())
    assert all(not m._forward_hooks for m in spot.model.modules())
    with pytest.raises(AnalyzerError, match="one layer"):
        spot.run("top-activations", (x, y), layer="conv,act")
    whole = spot.run("top-activations", (x, y), layer="head.2", k=1)  # a Linear: 1×1 maps
    assert whole.meta["map_size"] == [1, 1]
    with pytest.raises(NetlensError, match="needs data"):
        spot.run("top-activations")


def test_cli_top_on_resnet18_folder(tmp_path, resnet18):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(3):
            img = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            cv2.imwrite(str(tmp_path / "data" / cls / f"{i}.png"), img)
    ck = netlens.save(
        Lens(resnet18, Preprocess(size=(32, 32))), tmp_path / "r18.pt", arch="resnet18"
    )
    out = tmp_path / "o"
    res = CliRunner().invoke(
        app,
        [
            "top",
            str(ck),
            "--data",
            str(tmp_path / "data"),
            "--layer",
            "layer2",
            "--channels",
            "0,3",
            "--top",
            "2",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["channels"] == [0, 3] and doc["samples"] == 6 and len(doc["table"]) == 4
    assert (out / "top-layer2.png").exists() and (out / "top-activations.csv").exists()
    files = sorted(str(p) for p in (tmp_path / "data").rglob("*.png"))  # a/0..2, b/0..2
    assert [row["path"] for row in doc["table"]] == [files[r["sample"]] for r in doc["table"]]


def test_all_four_views_leave_a_timm_resnet18_as_it_was(resnet18):
    lens = Lens(resnet18, Preprocess(size=(32, 32)))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    data = (x, torch.zeros(4, dtype=torch.long))
    with assert_model_unchanged(resnet18):
        lens.kernels("layer1.0.conv1", sort=True)
        lens.features(x[:1], layer="layer2", top=4)
        lens.run("stats", data, batch_size=3)
        lens.run("top-activations", data, layer="layer3", k=2, max_channels=2)
    assert_no_hooks(resnet18)


class Broken(nn.Module):
    """Raises in the middle of its forward (after the probed conv ran)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.conv(x)
        raise RuntimeError("boom")


@pytest.mark.parametrize("analyzer", ["features", "stats", "top-activations"])
def test_no_hook_survives_a_model_that_raises(analyzer):
    model = Broken().eval()
    lens = Lens(model, Preprocess(size=(8, 8)))
    x = torch.zeros(2, 3, 8, 8)
    inputs = x if analyzer == "features" else (x, torch.zeros(2, dtype=torch.long))
    opts = {"layers": "conv"} if analyzer == "stats" else {"layer": "conv"}
    with assert_model_unchanged(model), pytest.raises(RuntimeError, match="boom"):
        lens.run(analyzer, inputs, **opts)
    assert_no_hooks(model)


def test_a_channel_whose_gradient_is_zero_everywhere_gets_the_whole_input_as_its_box():
    """A dead channel's top image has no gradient anywhere: ``top`` crashed there
    (``ones_like() takes 1 positional argument``)."""
    import torch

    from netlens.analyzers.top_activations import gradient_box

    assert gradient_box(torch.zeros(3, 5, 7)) == (0, 0, 5, 7)


def test_a_linear_layers_units_rank_the_whole_images() -> None:
    """``top --layer fc`` (N×K: which images excite class k most) was refused for having "no
    spatial extent", though an N×C×1×1 avgpool worked: a vector is a 1×1 map, its patch the
    whole image."""
    import netlens

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()  # fmt: skip
    lens = netlens.load(model, input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    x = torch.randn(20, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    result = lens.run("top-activations", (x, torch.zeros(20).long()), layer="4", k=3)
    with torch.no_grad():
        logits = model(x)
    for row in result.table:
        c = row["channel"]
        assert row["sample"] == int(logits[:, c].argsort(descending=True)[row["rank"] - 1])
        assert row["score"] == pytest.approx(float(logits[row["sample"], c]), abs=1e-5)
        assert row["box"] == [0, 0, 32, 32]

"""Kernels analyzer: exact weights in the right tiles, views per layer kind, stats, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import netlens
from netlens.analyzers.kernels import filter_stats
from netlens.cli.app import app
from netlens.errors import AnalyzerError
from netlens.images import Preprocess
from netlens.lens import Lens
from netlens.render.kernel_figures import kernels_figure


class HandNet(nn.Module):
    """Every kind of layer the kernels view distinguishes, with hand-set weights."""

    def __init__(self) -> None:
        super().__init__()
        self.rgb = nn.Conv2d(3, 4, 3, padding=1)
        self.deep = nn.Conv2d(4, 6, 3, padding=1)
        self.grouped = nn.Conv2d(6, 4, 3, padding=1, groups=2)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.point = nn.Conv2d(4, 5, 1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(5 * 8 * 8, 3)
        with torch.no_grad():
            for i, p in enumerate(self.parameters()):
                n = p.numel()
                p.copy_(torch.linspace(-1, 1, n).roll(i * 7).reshape(p.shape) * (1 + i))
            self.deep.weight[2].zero_()  # a dead filter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.point(self.dw(self.grouped(self.deep(self.rgb(x))))))
        return self.fc(x.flatten(1))


@pytest.fixture
def lens() -> Lens:
    return Lens(HandNet().eval(), Preprocess(size=(8, 8)))


def _minmax(a: np.ndarray) -> np.ndarray:
    return (a - a.min()) / (a.max() - a.min())


def test_rgb_tiles_hold_the_exact_weights_in_order(lens):
    r = lens.kernels()  # default: the first conv
    w = lens.model.rgb.weight.detach().numpy()
    assert r.meta["layer"] == "rgb" and r.meta["view"] == "rgb"
    assert r.arrays["tiles"].shape == (4, 3, 3, 3)
    fig, grid = kernels_figure(r.arrays, r.meta)
    for i in range(4):
        np.testing.assert_array_equal(r.arrays["tiles"][i], w[i].transpose(1, 2, 0))
        # what is drawn: filter i, scaled to its own min..max, at tile i of the mosaic
        np.testing.assert_allclose(grid.tile(i), _minmax(w[i].transpose(1, 2, 0)), atol=1e-6)
    assert [t.get_text() for t in fig.axes[0].texts] == ["0", "1", "2", "3"]


def test_sorted_by_norm_puts_the_largest_filter_first(lens):
    r = lens.kernels("deep", sort=True, normalize="joint")
    w = lens.model.deep.weight.detach().numpy()
    norms = np.linalg.norm(w.reshape(6, -1), axis=1)
    np.testing.assert_array_equal(r.arrays["order"], np.argsort(-norms, kind="stable"))
    _, grid = kernels_figure(r.arrays, r.meta)
    lim = np.abs(w.mean(axis=1)).max()  # joint, symmetric: -lim..lim → 0..1
    first = r.arrays["order"][0]
    np.testing.assert_allclose(grid.tile(0), (w[first].mean(axis=0) + lim) / (2 * lim), atol=1e-6)
    assert r.arrays["order"][-1] == 2  # the zeroed filter is last


@pytest.mark.parametrize(
    ("reduce", "ref"),
    [
        ("mean", lambda w: w.mean(axis=1)),
        ("l2", lambda w: np.sqrt((w**2).sum(axis=1))),
        ("channel:3", lambda w: w[:, 3]),
    ],
)
def test_deeper_conv_reductions(lens, reduce, ref):
    r = lens.kernels("deep", reduce=reduce)
    np.testing.assert_allclose(
        r.arrays["tiles"], ref(lens.model.deep.weight.detach().numpy()), rtol=1e-6
    )
    assert r.meta["reduce"] == reduce.split(":")[0]


def test_grouped_depthwise_and_pointwise_views(lens):
    g = lens.kernels("grouped")
    np.testing.assert_allclose(
        g.arrays["tiles"], lens.model.grouped.weight.detach().numpy().mean(axis=1)
    )
    d = lens.kernels("dw")
    assert d.meta["depthwise"] and d.meta["reduce"] == "none"
    np.testing.assert_array_equal(d.arrays["tiles"], lens.model.dw.weight.detach()[:, 0].numpy())
    p = lens.kernels("point")
    assert p.meta["view"] == "matrix" and "tiles" not in p.arrays
    np.testing.assert_array_equal(
        p.arrays["matrix"], lens.model.point.weight.detach()[:, :, 0, 0].numpy()
    )
    fig, grid = kernels_figure(p.arrays, p.meta)
    assert grid is None and len(fig.axes) == 2  # heatmap + colour bar


def test_linear_fed_by_a_feature_map_is_reshaped(lens):
    r = lens.kernels("fc")
    assert r.meta["reshaped_to"] == [5, 8, 8]
    w = lens.model.fc.weight.detach().numpy().reshape(3, 5, 8, 8)
    np.testing.assert_allclose(r.arrays["tiles"], w.mean(axis=1), rtol=1e-6)


def test_linear_on_the_flattened_image_and_plain_matrix():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(36, 7), nn.ReLU(), nn.Linear(7, 3))
    lens = Lens(mlp, Preprocess(size=(6, 6), channels=1, mean=(0.5,), std=(0.5,)))
    first = lens.kernels()
    assert first.meta["layer"] == "1" and first.meta["reshaped_to"] == [1, 6, 6]
    np.testing.assert_array_equal(
        first.arrays["tiles"], mlp[1].weight.detach().numpy().reshape(7, 6, 6)
    )
    last = lens.kernels("3")
    assert last.meta["view"] == "matrix" and last.arrays["matrix"].shape == (3, 7)


def test_transposed_conv_filters_are_output_channels():
    torch.manual_seed(0)
    net = nn.Sequential(nn.ConvTranspose2d(4, 6, 3, groups=2), nn.Conv2d(6, 2, 1))
    lens = Lens(net, Preprocess(size=(5, 5), channels=4, mean=(0.5,) * 4, std=(0.5,) * 4))
    r = lens.kernels("0")
    w = net[0].weight.detach()  # in × out/groups × k × k = 4 × 3 × 3 × 3
    per_out = torch.cat([w[:2].transpose(0, 1), w[2:].transpose(0, 1)])  # 6 × 2 × 3 × 3
    np.testing.assert_allclose(r.arrays["tiles"], per_out.mean(dim=1).numpy(), rtol=1e-6)
    assert r.meta["total"] == 6


def test_filter_statistics_and_near_zero(lens):
    r = lens.kernels("deep")
    w = lens.model.deep.weight.detach().numpy()
    rows = {row["filter"]: row for row in r.table}
    assert len(rows) == 6 and r.meta["near_zero"] == [2]
    np.testing.assert_allclose(rows[1]["norm"], np.linalg.norm(w[1]), rtol=1e-6)
    np.testing.assert_allclose(rows[4]["mean"], w[4].mean(), rtol=1e-5)
    assert filter_stats(np.zeros((2, 3)))[0]["near_zero"]


def test_errors_and_model_untouched(lens):
    before = {k: v.clone() for k, v in lens.model.state_dict().items()}
    with pytest.raises(AnalyzerError, match="no 2-D conv or linear weight"):
        lens.kernels("act")
    with pytest.raises(AnalyzerError, match="matched 5"):
        lens.kernels("type:Conv2d")
    with pytest.raises(AnalyzerError, match="reduce must be"):
        lens.kernels("deep", reduce="max")
    with pytest.raises(AnalyzerError, match="out of range"):
        lens.kernels("deep", reduce="channel:9")
    lens.kernels("rgb").figures()
    after = lens.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not m._forward_hooks for m in lens.model.modules())


def test_cli_kernels_on_timm_resnet18_and_torchvision_alexnet(tmp_path, resnet18):
    import torchvision

    runner = CliRunner()
    ck = netlens.save(
        Lens(resnet18, Preprocess(size=(32, 32))), tmp_path / "r18.pt", arch="resnet18"
    )
    res = runner.invoke(app, ["kernels", str(ck), "--out", str(tmp_path / "o1"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["layer"] == "conv1" and doc["view"] == "rgb" and len(doc["table"]) == 64
    assert (tmp_path / "o1" / "kernels-conv1.png").stat().st_size > 10_000

    torch.manual_seed(0)
    alex = torchvision.models.alexnet(num_classes=3)
    torch.save(alex.state_dict(), tmp_path / "alex.pth")
    res = runner.invoke(
        app,
        [
            "kernels",
            str(tmp_path / "alex.pth"),
            "--arch",
            "tv:alexnet",
            "--layer",
            "features.3",
            "--reduce",
            "l2",
            "--sort",
            "--out",
            str(tmp_path / "o2"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o2" / "kernels-features_3.png").exists()
    doc = json.loads((tmp_path / "o2" / "kernels.json").read_text())
    assert doc["total"] == 192 and doc["shown"] == 64 and doc["sorted"]

    res = runner.invoke(app, ["kernels", str(ck), "--layer", "nope", "--out", str(tmp_path)])
    assert res.exit_code == 1 and "no layer 'nope'" in res.output


def test_dead_filters_are_grey_labelled_and_warned() -> None:
    """A 1e-9 filter would be stretched to full contrast by per-filter scaling: it is drawn
    flat grey and labelled instead, and the result warns once."""
    from netlens.render.kernel_figures import mark_dead

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with torch.no_grad():
        net[0].weight[2] *= 1e-9
    lens = Lens(net, Preprocess(size=(8, 8)))
    r = lens.kernels()
    assert r.meta["near_zero"] == [2] and "1 of 4 filters" in r.meta["warnings"][0]
    display, labels = mark_dead(np.random.rand(4, 3, 3, 3), r.arrays["order"], [2])
    assert labels == ["0", "1", "2 dead", "3"] and np.all(display[2] == 0.5)
    assert np.ptp(display[1]) > 0


class LateStem(nn.Module):
    """A head and an auxiliary branch declared above the stem, as some papers' code does."""

    def __init__(self) -> None:
        super().__init__()
        self.aux = nn.Conv2d(8, 2, 1)  # declared first, reached last
        self.head = nn.Linear(8, 3)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.stem(x))
        return self.head(f.mean((2, 3))) + self.aux(f).mean((1, 2, 3))[:, None]


def test_default_layer_is_the_first_conv_the_input_reaches():
    lens = Lens(LateStem().eval(), Preprocess(size=(8, 8)))
    r = lens.kernels()
    assert r.meta["layer"] == "stem" and r.meta["view"] == "rgb"
    np.testing.assert_array_equal(r.arrays["weight"], lens.model.stem.weight.detach().numpy())


def test_linear_is_reshaped_only_when_it_reads_that_map_flattened():
    """A classifier after global pooling (N×512×1×1) is a matrix, and so is a Linear whose
    input size merely equals an earlier map's (VGG's last Linear(4096, K) beside a 256×4×4
    conv map, a DenseNet's 1024 features on a 1×32×32 input)."""
    torch.manual_seed(0)
    pooled = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)
    )
    r = Lens(pooled.eval(), Preprocess(size=(8, 8))).kernels("3")
    assert r.meta["view"] == "matrix" and "reshaped_to" not in r.meta

    coincident = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),  # 4×4×4 = 64 values: the same as the Linear's inputs
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 3),
    )  # fmt: skip
    lens = Lens(coincident.eval(), Preprocess(size=(4, 4), channels=1, mean=(0.5,), std=(0.5,)))
    r = lens.kernels("5")
    assert r.meta["view"] == "matrix" and r.arrays["matrix"].shape == (3, 64)
    image_sized = nn.Sequential(  # 16 pooled features on a 1×4×4 input: not the image
        nn.Conv2d(1, 16, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2)
    )
    lens = Lens(image_sized.eval(), Preprocess(size=(4, 4), channels=1, mean=(0.5,), std=(0.5,)))
    assert lens.kernels("3").meta["view"] == "matrix"


def test_default_layer_of_a_model_without_2d_convs_is_refused():
    class Rows(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(8, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x.flatten(1, 2)).mean(-1))

    lens = Lens(Rows().eval(), Preprocess(size=(8, 8), channels=1, mean=(0.5,), std=(0.5,)))
    with pytest.raises(AnalyzerError, match=r"Conv1ds \(conv\).*--layer"):
        lens.kernels()
    assert lens.kernels("fc").meta["view"] == "matrix"

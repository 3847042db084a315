"""Stats analyzer: streaming statistics equal those of the stacked activations; CLI."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import netlens
from netlens.analyzers.stats import LayerStats, default_stats_layers
from netlens.cli.app import app
from netlens.errors import AnalyzerError, NetlensError
from netlens.images import Preprocess
from netlens.lens import Lens


class SmallNet(nn.Module):
    """Two conv+ReLU stages (one shared ReLU module, called twice), a GELU head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 4, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 6 * 6, 5)
        self.gelu = nn.GELU()
        self.out = nn.Linear(5, 3)
        with torch.no_grad():
            self.conv2.bias[1] = -50.0  # channel 1 of the second stage never fires

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv2(self.relu(self.conv1(x))))
        return self.out(self.gelu(self.fc(x.flatten(1))))


@pytest.fixture
def net() -> Lens:
    torch.manual_seed(0)
    return Lens(SmallNet().eval(), Preprocess(size=(12, 12)))


def _stacked(model: nn.Module, x: torch.Tensor, batch: int) -> dict[str, list[torch.Tensor]]:
    """Every call's output of every ReLU/GELU module over the whole set, stacked.

    The forwards run in the same batches as the analyzer's: a conv over another batch size may
    take another kernel and differ in the last float32 bit, and this test checks the streaming
    merge to 1e-9, not float32 kernels.
    """
    seen: dict[str, list[torch.Tensor]] = {"relu": [], "gelu": []}
    hooks = [
        getattr(model, n).register_forward_hook(
            lambda m, i, o, n=n: seen[n].append(o.detach().clone())
        )
        for n in seen
    ]
    with torch.no_grad():
        for chunk in x.split(batch):
            model(chunk)
    for h in hooks:
        h.remove()
    calls = {n: len(v) // len(x.split(batch)) for n, v in seen.items()}
    return {n: [torch.cat(v[k :: calls[n]]) for k in range(calls[n])] for n, v in seen.items()}


def test_streaming_equals_statistics_of_the_stacked_activations(net):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(23, 3, 12, 12, generator=g), torch.zeros(23, dtype=torch.long)
    r = net.run("stats", (x, y), batch_size=5, bins=20)  # 5+5+5+5+3: uneven batches
    assert [row["layer"] for row in r.table] == ["relu@0", "relu@1", "gelu"]
    full = _stacked(net.model, x, 5)
    refs = {"relu@0": full["relu"][0], "relu@1": full["relu"][1], "gelu": full["gelu"][0]}
    for row in r.table:
        a = refs[row["layer"]].double()
        v = a.numpy().ravel()
        assert row["values"] == v.size
        np.testing.assert_allclose(row["mean"], v.mean(), rtol=1e-9)
        np.testing.assert_allclose(row["std"], v.std(), rtol=1e-9)
        assert row["min"] == pytest.approx(v.min()) and row["max"] == pytest.approx(v.max())
        assert row["near_zero"] == pytest.approx((v <= 0).mean())
        dead = (a <= 0).all(dim=0)  # a unit: one element of one input's output
        assert row["dead_units"] == pytest.approx(dead.double().mean().item())
        first = a[:5].numpy().ravel()  # bins: the first batch's range, widened by 10%
        lo, hi = first.min(), first.max()
        pad = 0.1 * (hi - lo)
        counts, edges = np.histogram(v, bins=20, range=(lo - pad, hi + pad))
        np.testing.assert_array_equal(r.arrays[f"{row['layer']}:hist"], counts)
        np.testing.assert_allclose(r.arrays[f"{row['layer']}:edges"], edges)
        assert row["underflow"] == (v < edges[0]).sum() and row["overflow"] == (v > edges[-1]).sum()
        assert counts.sum() + row["underflow"] + row["overflow"] == v.size
    second = next(row for row in r.table if row["layer"] == "relu@1")
    assert second["dead_channels"] == pytest.approx(0.25)  # channel 1 of 4
    gelu = next(row for row in r.table if row["layer"] == "gelu")
    assert gelu["shape"] == [5] and gelu["channels"] == 5
    # the names are the call selectors every command takes back
    again = net.run("stats", (x, y), layers="relu@1", batch_size=5, bins=20)
    assert [row["layer"] for row in again.table] == ["relu@1"]
    assert again.table[0]["mean"] == second["mean"]


def test_layer_stats_merge_matches_one_pass_and_fixed_range():
    g = torch.Generator().manual_seed(3)
    chunks = [torch.randn(n, 2, 3, generator=g) * 3 + 1 for n in (1, 4, 7)]
    s = LayerStats(eps=0.5, bins=8, hist_range=(-2.0, 2.0))
    for c in chunks:
        s.update(c)
    v = torch.cat(chunks).double().numpy()
    assert s.mean == pytest.approx(v.mean(), rel=1e-12)
    assert s.std == pytest.approx(v.std(), rel=1e-12)
    counts, _ = np.histogram(v.ravel(), bins=8, range=(-2, 2))
    np.testing.assert_array_equal(s.hist, counts)
    assert s.underflow == (v < -2).sum() and s.overflow == (v > 2).sum()
    row = s.row("x")
    assert row["near_zero"] == pytest.approx((v <= 0.5).mean())
    assert row["dead_units"] == pytest.approx((v <= 0.5).all(axis=0).mean())


def test_default_layers_figures_and_model_untouched(net):
    assert default_stats_layers(net.model) == ["relu", "gelu"]
    assert default_stats_layers(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())) == ["0"]
    before = {k: v.clone() for k, v in net.model.state_dict().items()}
    x = torch.randn(4, 3, 12, 12)
    r = net.run("stats", (x, torch.zeros(4, dtype=torch.long)), layers="conv1,fc")
    assert [row["layer"] for row in r.table] == ["conv1", "fc"]
    assert set(r.figures()) == {"stats-dead", "stats-histograms"}
    assert all(torch.equal(before[k], v) for k, v in net.model.state_dict().items())
    assert all(not m._forward_hooks for m in net.model.modules())
    with pytest.raises(NetlensError, match="needs data"):
        net.run("stats")
    with pytest.raises(AnalyzerError, match="hist_range"):
        net.run("stats", (x, torch.zeros(4, dtype=torch.long)), hist_range="3,1")


def test_cli_stats_on_a_folder(tmp_path, resnet18):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(3):
            img = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            cv2.imwrite(str(tmp_path / "data" / cls / f"{i}.png"), img)
    ck = netlens.save(
        Lens(resnet18, Preprocess(size=(32, 32))), tmp_path / "r18.pt", arch="resnet18"
    )
    runner = CliRunner()
    out = tmp_path / "o"
    res = runner.invoke(
        app,
        [
            "stats",
            str(ck),
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(out),
            "--json",
            "--batch-size",
            "4",
            "--hist-range=-1,5",
            "--layers",
            "act1,layer4.1.act2",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["samples"] == 6 and [r["layer"] for r in doc["table"]] == ["act1", "layer4.1.act2"]
    assert len(default_stats_layers(resnet18)) == 17  # timm resnet18: 17 ReLU modules
    assert doc["hist_range"] == [-1.0, 5.0] and doc["table"][0]["underflow"] == 0
    assert {"stats-dead.png", "stats-histograms.png", "stats.csv", "stats.json"} <= {
        p.name for p in out.iterdir()
    }
    res = runner.invoke(app, ["stats", str(ck), "--out", str(out)])
    assert res.exit_code == 1 and "--data" in res.output


def test_vit_token_layers():
    import timm

    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=3, depth=2
    ).eval()
    lens = Lens(vit, Preprocess(size=(32, 32)))
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    r = lens.run("stats", (x, torch.zeros(5, dtype=torch.long)), batch_size=2)
    assert [row["layer"] for row in r.table] == ["blocks.0.mlp.act", "blocks.1.mlp.act"]
    row = r.table[0]
    assert row["shape"] == [17, 768] and row["channels"] == 768  # tokens × hidden features
    assert row["values"] == 5 * 17 * 768
    top = lens.run(
        "top-activations",
        (x, torch.zeros(5, dtype=torch.long)),
        layer="blocks.1",
        k=2,
        channels=[0, 7],
    )
    assert top.meta["map_size"] == [4, 4]
    cells = top.arrays["cells"]
    assert ((cells[..., 2] - cells[..., 0]) == 8).all()  # a token is an 8×8 patch
    boxes = top.arrays["boxes"]
    assert (boxes[..., :2] >= 0).all() and (boxes[..., 2:] <= 32).all()


@pytest.mark.parametrize("analyzer", ["stats", "top-activations"])
def test_label_free_analyzers_take_any_images(analyzer, net, tmp_path):
    """``stats`` and ``top`` read activations only, yet refused a flat folder of images ("has
    no class subfolders"), folders named otherwise than the model's classes, and bare image
    tensors. Any images will do now; the header says labels are not used."""
    rng = np.random.default_rng(0)
    flat, named = tmp_path / "flat", tmp_path / "named"
    for folder in (flat, named / "dogs", named / "cats"):
        folder.mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 255, (12, 12, 3), np.uint8))
    net.classes = ["tench", "goldfish", "shark"]  # none of them 'dogs' or 'cats'
    options = {"layers": "auto"} if analyzer == "stats" else {}
    for data in (flat, named, torch.rand(3, 3, 12, 12)):
        res = net.run(analyzer, data, **options)
        assert res.meta["run"]["data"]["label_source"] == f"not used: {analyzer} reads no labels"
    ref = net.run(analyzer, torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(1)))
    assert ref.table  # and the results themselves are there


def test_default_layers_are_activations_of_any_library() -> None:
    """timm's own ``GELU`` (``timm.layers.activations``), nfnet's ``GammaAct`` and Hugging
    Face's ``GELUActivation`` are activations: the default was their models' convs."""
    import timm
    from torch import nn

    from netlens.analyzers.stats import default_stats_layers

    convnext = timm.create_model("convnext_atto", pretrained=False)
    acts = default_stats_layers(convnext)
    assert len(acts) == 12 and all(a.endswith("mlp.act") for a in acts)
    nfnet = timm.create_model("dm_nfnet_f0", pretrained=False)
    assert (
        sum(
            type(nfnet.get_submodule(a)).__name__ == "GammaAct" for a in default_stats_layers(nfnet)
        )
        == 52
    )

    class GELUActivation(nn.Module):  # as transformers.activations defines it
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.gelu(x)

    mlp = nn.Sequential(nn.Linear(4, 8), GELUActivation(), nn.Linear(8, 2), nn.Softmax(-1))
    assert default_stats_layers(mlp) == ["1"]


def test_a_layer_that_did_not_run_is_named_not_dropped(net) -> None:
    """``relu@5`` of a module that runs twice, or a module the forward never calls (an
    auxiliary head in eval mode), was left out of the table without a word when another
    layer ran, and alone blamed a tuple output."""
    net.model.aux = nn.Linear(5, 2)  # declared, never called
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(4, 3, 12, 12, generator=g), torch.zeros(4, dtype=torch.long))
    for layers in ("conv1,relu@5", "relu@5", "gelu,aux"):
        with pytest.raises(AnalyzerError, match="did not run in the model's forward"):
            net.run("stats", data, layers=layers)
    net.model.aux2 = nn.ReLU()  # an activation the default picks, never called
    auto = net.run("stats", data)
    assert [r["layer"] for r in auto.table] == ["relu@0", "relu@1", "gelu"]
    assert "'aux2' did not run" in auto.meta["warnings"][0]


def test_the_histograms_say_what_lies_outside_their_bins(net) -> None:
    """Bins come from the first batch: with a flat first image most values fell outside,
    and the figure showed the narrow range without a word."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 12, 12, generator=g)
    x[0] = 0.0
    r = net.run("stats", (x, torch.zeros(5, dtype=torch.long)), layers="relu@0", batch_size=1)
    row = r.table[0]
    share = (row["underflow"] + row["overflow"]) / row["values"]
    assert share > 0.05
    fig = r.figures()["stats-histograms"]
    notes = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert notes == [f"{share:.1%} outside"]

"""sanity end to end: Grad-CAM on a trained model passes, an edge detector is flagged."""

from __future__ import annotations

import json
import re

import cv2
import pytest
import torch
import torch.nn.functional as F
from test_evaluate import GapNet, toy_data, train_toy
from typer.testing import CliRunner

import netlens
from netlens.analyzers.cam_base import CamContext, CamMethod
from netlens.plugins import hookimpl
from netlens.plugins.manager import PluginHost


class EdgeMap(CamMethod):
    """Sobel edge magnitude of the input: a plausible-looking map that ignores the model."""

    name = "edges"
    needs_grads = False

    def weights(self, ctx: CamContext) -> torch.Tensor:
        return torch.ones(len(ctx.x), 1)

    def combine(self, ctx: CamContext, weights: torch.Tensor) -> torch.Tensor:
        k = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
        g = ctx.x.mean(dim=1, keepdim=True)
        gx, gy = F.conv2d(g, k, padding=1), F.conv2d(g, k.transpose(2, 3), padding=1)
        return torch.sqrt(gx**2 + gy**2)[:, 0]


class EdgePlugin:
    @hookimpl
    def netlens_register_cam_methods(self, registry) -> None:
        registry.add("edges", EdgeMap)


@pytest.fixture(scope="module")
def trained() -> GapNet:
    return train_toy()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    ds = toy_data(6, seed=11)
    return torch.stack([ds[i][0] for i in range(len(ds))])


def test_gradcam_changes_and_edges_are_flagged(trained: GapNet, images: torch.Tensor) -> None:
    lens = netlens.load(trained, host=PluginHost([EdgePlugin()]))
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    result = lens.run("sanity", images, method="gradcam,edges")
    assert result.meta["steps"] == ["fc", "features.2", "features.0"]
    rho = result.arrays["gradcam/spearman"]
    assert rho.shape == (3, 6)
    assert rho[0].mean() < 0.8  # the top layer alone already changes the maps
    assert result.passes("gradcam")
    assert result.arrays["edges/spearman"] == pytest.approx(1.0)
    assert not result.passes("edges")
    assert "FLAGGED" in result.verdicts["edges"]["verdict"]
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())
    assert not trained.training and all(p.grad is None for p in trained.parameters())


def test_figures_and_files(trained: GapNet, images: torch.Tensor, tmp_path) -> None:
    result = netlens.load(trained).run("sanity", images[:2], method="gradcam", seed=3)
    names = {p.name for p in result.save(tmp_path)}
    assert {
        "sanity-strip-gradcam.png",
        "sanity-similarity.png",
        "sanity.csv",
        "sanity.json",
    } <= names
    assert result.arrays["gradcam/maps"].shape == (4, 2, 32, 32)


def test_cli_verdict_and_json(trained: GapNet, tmp_path) -> None:
    from netlens.cli.app import app

    torch.save(trained, tmp_path / "toy.pt")
    ds = toy_data(2, seed=2)
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), ds.images[i][..., ::-1])
    args = [
        "sanity",
        str(tmp_path / "toy.pt"),
        str(tmp_path / "img0.png"),
        str(tmp_path / "img1.png"),
        "--trust",
        "--out",
        str(tmp_path / "o"),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "3 randomisation steps" in res.output
    assert re.search(r"gradcam\W+passes", res.output)
    res = CliRunner().invoke(app, [*args, "--json", "--quiet"])
    assert json.loads(res.stdout)["verdicts"]["gradcam"]["passes"] is True
    bad = CliRunner().invoke(app, [*args, "--method", "nocam"])
    assert bad.exit_code == 1 and "unknown CAM method" in bad.output


def test_randomization_metric_in_evaluate(trained: GapNet) -> None:
    lens = netlens.load(trained, host=PluginHost([EdgePlugin()]))
    result = lens.evaluate(toy_data(4, seed=9), methods="gradcam,edges", metrics="randomization")
    assert result.score("gradcam", "randomization") < 0.5
    assert result.score("edges", "randomization") == pytest.approx(1.0)
    assert "randomization" not in {
        r["metric"] for r in lens.evaluate(toy_data(2, seed=9), steps=2, fractions=(0.5,)).table
    }  # not a default metric


def test_a_model_that_cannot_be_copied_is_said_in_one_line() -> None:
    """A model holding a lock (or a file handle): sanity's copy failed with a raw TypeError."""
    import threading

    from netlens.errors import NetlensError

    model = GapNet().eval()
    model._lock = threading.Lock()
    with pytest.raises(NetlensError, match=r"cannot be copied: the model's _lock \(TypeError"):
        netlens.load(model).run("sanity", torch.rand(1, 3, 32, 32) - 0.5, method="gradcam")

"""netlens.ablate end to end: metric values against independent references, CIs, resume,
restoring the model after errors and Ctrl-C, channel studies, figures and the CLI."""

from __future__ import annotations

import copy
import csv
import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

import netlens
from netlens.analyzers.ablation.scoring import METRICS, hurt_classes, metric_value
from netlens.analyzers.options import OptionError
from netlens.errors import AnalyzerError, DataError, NetlensError
from netlens.models.archs import resnet

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = resnet(num_classes=5, in_chans=1, img_size=16, widths=(8, 16), blocks=(2, 2))
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=gen) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=gen) * 0.3
    model.eval()
    with torch.no_grad():  # a head on standardised features, so predictions vary by image
        feats = model.flatten(
            model.pool(model.forward_features(torch.randn(64, 1, 16, 16, generator=gen)))
        )
        weight = torch.randn(5, feats.shape[1], generator=gen) / (feats.std(0) + 1e-3)
        model.fc.weight.copy_(weight)
        model.fc.bias.copy_(-weight @ feats.mean(0))
    return model


def _data(n: int = 60, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 16, 16, generator=gen)
    with torch.no_grad():  # labels that agree with the model most of the time
        y = _model()(x).argmax(1)
    flip = torch.rand(n, generator=gen) < 0.3
    return x, torch.where(flip, torch.randint(0, 5, (n,), generator=gen), y)


class Skip(nn.Module):
    """A residual block with its branch removed, written out independently of netlens."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        return b.act2(b.downsample(x) if b.downsample is not None else x)


def _reference_logits(model: nn.Module, unit: str, x: torch.Tensor) -> torch.Tensor:
    ref = copy.deepcopy(model)
    stage, idx = unit.split(".")
    getattr(ref, stage)[int(idx)] = Skip(getattr(ref, stage)[int(idx)])
    with torch.no_grad():
        return ref(x)


def _macro_f1(pred: np.ndarray, label: np.ndarray) -> float:
    """scikit-learn's f1_score(average="macro"): classes in the labels or the predictions."""
    scores = []
    for c in np.union1d(label, pred):
        tp = np.sum((pred == c) & (label == c))
        prec = tp / max(1, np.sum(pred == c))
        rec = tp / max(1, np.sum(label == c))
        scores.append(0.0 if tp == 0 else 2 * prec * rec / (prec + rec))
    return float(np.mean(scores))


def test_block_study_against_independent_references() -> None:
    model, (x, y) = _model(), _data()
    with torch.no_grad():
        base_logits = model(x)
    results = {
        m: netlens.ablate(model, (x, y), metric=m, batch_size=16, resamples=300)
        for m in ("accuracy", "loss", "f1", "top5")
    }
    res = results["accuracy"]
    assert [r["unit"] for r in res.rows] == ["layer1.0", "layer1.1", "layer2.0", "layer2.1"]
    assert [r["downsample"] for r in res.rows] == [False, False, True, False]
    assert res.table[0]["kind"] == "baseline" and res.baseline["n"] == 60
    assert res.baseline["value"] == pytest.approx((base_logits.argmax(1) == y).float().mean())
    for i, row in enumerate(res.rows):
        logits = _reference_logits(model, row["unit"], x)
        pred = logits.argmax(1)
        refs = {
            "accuracy": (pred == y).float().mean().item(),
            "loss": F.cross_entropy(logits, y).item(),
            "f1": _macro_f1(pred.numpy(), y.numpy()),
            "top5": (logits.topk(5, 1).indices == y[:, None]).any(1).float().mean().item(),
        }
        for metric, ref in refs.items():
            r = results[metric].rows[i]
            # float32 logits reduced in another order (batches, float64 sums): ~1e-7 relative
            assert r["value"] == pytest.approx(ref, rel=1e-6, abs=1e-6), (metric, row["unit"])
            assert r["ci_low"] <= r["value"] + 1e-9 and r["value"] <= r["ci_high"] + 1e-9
            assert r["delta_ci_low"] <= r["delta"] + 1e-9 <= r["delta_ci_high"] + 2e-9
            base = results[metric].baseline["value"]
            assert r["delta"] == pytest.approx(r["value"] - base, abs=1e-12)
            harm = "increase" if metric == "loss" else "drop"
            assert results[metric].meta["harm"] == harm
            assert r[harm] == pytest.approx(r["delta"] if metric == "loss" else -r["delta"])
    assert any(r["drop"] != 0 for r in res.rows)
    assert all(r["increase"] > 0 for r in results["loss"].rows)  # skipping blocks costs loss
    # seeded bootstrap: the same numbers again
    again = netlens.ablate(model, (x, y), batch_size=16, resamples=300)
    assert again.rows == res.rows


def test_hurt_classes_and_metric_helpers() -> None:
    label = np.array([0, 0, 1, 1, 2, 2])
    base = {"pred": label.copy(), "label": label, "value": np.ones(6)}
    pred = np.array([0, 0, 0, 0, 2, 0])
    out = {"pred": pred, "label": label, "value": (pred == label).astype(float)}
    assert hurt_classes(base, out, 3, "label", ["cat", "dog", "fox"]) == [
        {"class": "dog", "before": 1.0, "after": 0.0},
        {"class": "fox", "before": 1.0, "after": 0.5},
    ]
    accuracy = METRICS["accuracy"]
    assert metric_value(accuracy, out, None, 3)[0] == pytest.approx(0.5)
    idx = np.array([[0, 1, 2, 3, 4, 5], [2, 2, 2, 3, 3, 3]])
    assert metric_value(accuracy, out, idx, 3).tolist() == [0.5, 0.0]


def test_model_restored_after_interrupt_and_resume(tmp_path) -> None:
    model, (x, y) = _model(), _data()
    model.train()
    model.layer1[1].eval()  # mixed flags must come back exactly
    flags = {n: m.training for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    calls = []

    def bomb(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        calls.append(len(output))
        # whole batches (16, 16, 16, 12): the baseline's 4, the first block's 4, then...
        if len([c for c in calls if c >= 12]) == 4 + 4 + 1:
            raise KeyboardInterrupt

    handle = model.fc.register_forward_hook(bomb)
    hooks_before = {n: len(m._forward_hooks) for n, m in model.named_modules()}
    with pytest.raises(KeyboardInterrupt):
        netlens.ablate(model, (x, y), batch_size=16, out=tmp_path, resamples=100)
    handle.remove()
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert all(
        len(m._forward_hooks) == hooks_before[n] - (n == "fc") for n, m in model.named_modules()
    )
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert not (tmp_path / "ablation.csv").exists()  # no result: the rows kept aside
    with (tmp_path / ".ablation.rows.csv").open() as fh:
        partial = [r["key"] for r in csv.DictReader(fh)]
    assert partial == ["baseline", "layer1.0"]

    resumed = netlens.ablate(model, (x, y), batch_size=16, out=tmp_path, resume=True, resamples=100)
    assert resumed.meta["resumed"] == 2
    fresh = netlens.ablate(model, (x, y), batch_size=16, resamples=100)
    assert resumed.rows == fresh.rows
    with pytest.raises(NetlensError, match="other settings.*mode"):
        netlens.ablate(model, (x, y), batch_size=16, out=tmp_path, resume=True, mode="zero")
    with pytest.raises(AnalyzerError, match="resume needs out="):
        netlens.ablate(model, (x, y), resume=True)


def test_errors_are_one_line_and_actionable() -> None:
    model, data = _model(), _data(8)
    with pytest.raises(AnalyzerError, match="identity cannot skip 'stem'.*--mode zero"):
        netlens.ablate(model, data, layers="stem")
    with pytest.raises(OptionError, match="mode must be one of identity, zero, mean, noise"):
        netlens.ablate(model, data, mode="drop")
    with pytest.raises(OptionError, match="metric must be one of .*agreement"):
        netlens.ablate(model, data, metric="auc")
    with pytest.raises(OptionError, match="no option 'resampels'.*resamples"):
        netlens.ablate(model, data, resampels=100)
    with pytest.raises(AnalyzerError, match="exactly one layer"):
        netlens.ablate(model, data, layers="layer1,layer2", channels=True)
    loader = torch.utils.data.DataLoader(list(zip(*data, strict=True)), shuffle=True)
    with pytest.raises(DataError, match="shuffle=False"):
        netlens.ablate(model, loader)
    bad = (data[0], torch.full((8,), 7))  # a label the 5-class model does not have
    with pytest.raises(DataError, match="7 is out of range.*--metric prob, kl or agreement"):
        netlens.ablate(model, bad)
    assert netlens.ablate(model, bad, metric="agreement", resamples=20).rows
    assert all(not m._forward_hooks for m in model.modules())


def test_channel_study_curves_and_figures(tmp_path) -> None:
    model, (x, y) = _model(), _data()
    lens = netlens.Lens(model, classes=list("abcde"))
    res = lens.ablate(
        (x, y), layers="layer2", channels=True, batch_size=60, points=5, resamples=100
    )
    assert res.meta["mode"] == "zero" and res.meta["paths"] == {"layer2": "cached"}
    assert [r["channel"] for r in res.rows] == list(range(16))
    assert res.arrays["curve_k"].tolist() == [0, 4, 8, 12, 16]
    imp, rnd = res.arrays["curve_importance"], res.arrays["curve_random"]
    assert imp[0] == rnd[0] == pytest.approx(res.baseline["value"])
    assert imp[-1] == pytest.approx(rnd[-1])  # all channels gone either way
    # removing the most important channels first hurts at least as much early on
    assert imp[1] <= rnd[1] + 1e-9
    assert res.arrays["curve_importance_classes"].shape == (5, 5)
    assert res.meta["per_class"] == "accuracy by true class"
    # the single-channel values agree with the naive path
    naive = lens.ablate(
        (x, y), layers="layer2", channels=True, batch_size=60, points=5, resamples=100, fast=False
    )
    assert naive.meta["paths"] == {"layer2": "naive"}
    assert [r["value"] for r in naive.rows] == [r["value"] for r in res.rows]
    files = res.save(tmp_path)
    assert (tmp_path / "ablation-channels.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "ablation.json").read_text())["channels"] is True
    assert len(files) == 4  # figure, CSV, JSON and the manifest


def test_channels_of_a_linear_layer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 1, 4, 4, generator=gen), torch.randint(0, 4, (24,), generator=gen)
    kw = {"layers": "1", "channels": True, "points": 3, "resamples": 50, "batch_size": 12}
    fast = netlens.ablate(model, (x, y), mode="mean", **kw)
    naive = netlens.ablate(model, (x, y), mode="mean", fast=False, **kw)
    assert len(fast.rows) == 8 and fast.arrays["curve_k"].tolist() == [0, 4, 8]
    assert [r["value"] for r in fast.rows] == [r["value"] for r in naive.rows]
    assert fast.arrays["curve_random"].tolist() == naive.arrays["curve_random"].tolist()
    assert any(r["drop"] != 0 for r in fast.rows)


def _image_folder(root, x: torch.Tensor, y: torch.Tensor) -> None:
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        d = root / f"class{int(label)}"
        d.mkdir(parents=True, exist_ok=True)
        arr = ((img[0].clamp(-2, 2) + 2) / 4 * 255).to(torch.uint8).numpy()
        cv2.imwrite(str(d / f"{i}.png"), arr)


def _saved_model(tmp_path, n: int = 20):
    model, (x, y) = _model(), _data(n)
    kwargs = {"num_classes": 5, "in_chans": 1, "img_size": 16, "widths": [8, 16], "blocks": [2, 2]}
    path = netlens.save(model, tmp_path / "model.pt", arch="resnet", arch_kwargs=kwargs)
    _image_folder(tmp_path / "data", x, y)
    return path


def test_cli_ablate(tmp_path) -> None:
    from netlens.cli.app import app

    path = _saved_model(tmp_path)
    out = tmp_path / "out"
    runner = CliRunner()
    args = ["ablate", str(path), "--data", str(tmp_path / "data"), "--out", str(out)]
    res = runner.invoke(app, [*args, "--json", "--mode", "zero"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["mode"] == "zero" and len(summary["table"]) == 5
    assert summary["run"]["layers"] == ["layer1.0", "layer1.1", "layer2.0", "layer2.1"]
    assert (out / "ablation.png").exists() and (out / "ablation.csv").exists()
    res = runner.invoke(app, [*args, "--resume", "--mode", "zero", "--metric", "loss"])
    assert res.exit_code == 1 and "other settings (metric)" in res.output
    res = runner.invoke(app, [*args, "--resume", "--mode", "zero"])
    assert res.exit_code == 0, res.output
    assert "layer2.0" in res.output and "intact model" in res.output and "drop" in res.output
    res = runner.invoke(app, ["ablate", str(path), "--data", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "Traceback" not in res.output


def test_cli_interrupt_and_resume(tmp_path, monkeypatch) -> None:
    """Ctrl-C after the first row: the message names the row file, --resume finishes it."""
    from netlens.analyzers.ablation.rows import StudyRows
    from netlens.cli.app import app

    path = _saved_model(tmp_path)
    out = tmp_path / "out"
    args = ["ablate", str(path), "--data", str(tmp_path / "data"), "--out", str(out), "--json"]
    runner = CliRunner()
    fresh = json.loads(runner.invoke(app, [*args[:-2], str(tmp_path / "fresh"), "--json"]).stdout)
    done = StudyRows.done

    def interrupted(self, key, outcomes):
        if len(self.rows) == 2:  # the baseline and one block are in
            raise KeyboardInterrupt
        done(self, key, outcomes)

    monkeypatch.setattr(StudyRows, "done", interrupted)
    res = runner.invoke(app, args)
    assert res.exit_code == 130 and "--resume" in res.output
    named = res.output.split("finished rows are in ")[1].split(";")[0].replace("\n", "")
    with open(named) as fh:
        assert [r["key"] for r in csv.DictReader(fh)] == ["baseline", "layer1.0"]
    monkeypatch.setattr(StudyRows, "done", done)
    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    resumed = json.loads(res.stdout)
    assert resumed["resumed"] == 2
    assert resumed["table"] == fresh["table"]


class Constant(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value.expand(x.shape[0], *self.value.shape).clone()


def test_mean_mode_and_small_cache_budget_against_reference() -> None:
    model, (x, y) = _model(), _data()
    with torch.no_grad():  # the dataset mean of layer2.0's output, computed independently
        h = model.layer1(model.stem(x))
        mean = model.layer2[0](h).double().mean(0).float()
        ref = copy.deepcopy(model)
        ref.layer2[0] = Constant(mean)
        ref_acc = (ref(x).argmax(1) == y).float().mean().item()
    res = netlens.ablate(
        model, (x, y), layers="layer2.0,layer1.1", mode="mean", batch_size=16, resamples=100
    )
    assert res.rows[0]["unit"] == "layer2.0"
    assert res.rows[0]["value"] == pytest.approx(ref_acc, abs=1e-9)
    # with no room to keep the batches' caches, ablations run in groups: the same rows
    tight = netlens.ablate(
        model,
        (x, y),
        layers="layer2.0,layer1.1",
        mode="mean",
        batch_size=16,
        resamples=100,
        cache_mb=0,
    )
    assert tight.rows == res.rows


@pytest.mark.parametrize("options", [{}, {"mode": "noise"}, {"layers": "conv2", "channels": True}])
def test_tiny_cnn_unchanged_and_no_hooks(options) -> None:
    from netlens.testing import assert_model_unchanged, assert_no_hooks, make_tiny_model

    model = make_tiny_model()
    model.train()  # flags must come back too
    gen = torch.Generator().manual_seed(0)
    data = (torch.randn(10, 3, 32, 32, generator=gen), torch.randint(0, 4, (10,), generator=gen))
    with assert_model_unchanged(model):
        res = netlens.ablate(
            model,
            data,
            mode=options.get("mode", "zero"),
            resamples=50,
            points=3,
            **{k: v for k, v in options.items() if k != "mode"},
        )
    assert_no_hooks(model)
    assert res.rows and all(np.isfinite(r["value"]) for r in res.rows)


def test_channel_figure_with_fewer_class_names_than_outputs(tmp_path) -> None:
    """Data naming 2 classes for a 5-output model (folders `a`, `b`; no model names) crashed
    the per-class curves with an IndexError, after the rows were written."""
    import cv2

    rng = np.random.default_rng(0)
    for folder in "ab":
        (tmp_path / folder).mkdir()
        for i in range(3):
            cv2.imwrite(str(tmp_path / folder / f"{i}.png"), rng.integers(0, 255, (16, 16, 3)))
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)
    ).eval()
    lens = netlens.Lens(model, netlens.Preprocess(size=(16, 16)))
    res = lens.ablate(tmp_path, mode="zero", layers="0", channels=[0, 1], resamples=50)
    assert res.meta["classes"] == ["a", "b"]
    res.save(tmp_path / "out")
    assert (tmp_path / "out" / "ablation-channels.png").stat().st_size > 0

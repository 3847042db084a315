"""Ablation metrics: the label-free ones against naive references, directions named truthfully,
and one bootstrap and one macro-F1 shared with the rest of netlens."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_ablation_study import Skip, _data, _model

import netlens
from netlens.analyzers.ablation.scoring import METRICS
from netlens.metrics.bootstrap import Resampler, mean_ci, percentile_ci
from netlens.render.ablation_figures import harm_axis_label
from netlens.train.evaluation import confusion_matrix, macro_f1, scores

pytestmark = pytest.mark.usefixtures("one_thread")


def _skipped_logits(model, unit: str, x: torch.Tensor) -> torch.Tensor:
    ref = copy.deepcopy(model)
    stage, idx = unit.split(".")
    getattr(ref, stage)[int(idx)] = Skip(getattr(ref, stage)[int(idx)])
    with torch.no_grad():
        return ref(x).double()


def _references(base: torch.Tensor, logits: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-image prob / kl / agreement, written with torch (float64)."""
    p, q = F.softmax(base, 1), F.softmax(logits, 1)
    cls = base.argmax(1)
    return {
        "prob": q[torch.arange(len(cls)), cls].numpy(),
        "kl": (p * (p.log() - q.log())).sum(1).numpy(),
        "agreement": (logits.argmax(1) == cls).double().numpy(),
    }


@pytest.mark.parametrize("metric", ["prob", "kl", "agreement"])
def test_label_free_metrics_against_references_and_unknown_labels(metric: str) -> None:
    model, (x, _) = _model(), _data()
    unknown = torch.full((len(x),), 99)  # labels the 5-class model does not have
    res = netlens.ablate(model, (x, unknown), metric=metric, batch_size=16, resamples=400)
    with torch.no_grad():
        base = model(x).double()
    assert res.baseline["value"] == pytest.approx(_references(base, base)[metric].mean())
    harm = "increase" if metric == "kl" else "drop"
    assert res.meta["harm"] == harm and res.meta["per_class"] == "agreement by intact class"
    for row in res.rows:
        per_image = _references(base, _skipped_logits(model, row["unit"], x))[metric]
        assert row["value"] == pytest.approx(per_image.mean(), rel=1e-6, abs=1e-9)
        # the interval is the shared bootstrap of the per-image values, same seed and resamples
        _, low, high, _ = mean_ci(per_image, resamples=400, seed=0)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high), rel=1e-6, abs=1e-9)
        assert row[harm] == pytest.approx(row["delta"] if harm == "increase" else -row["delta"])
    assert all(r[harm] > 0 for r in res.rows)  # switching blocks off moves away from the intact
    hurt = [h for r in res.rows for h in r["hurt_classes"]]
    assert hurt and all(h["before"] == 1.0 and h["after"] < 1.0 for h in hurt)


def test_harm_is_named_for_the_direction() -> None:
    assert {m.name: m.harm for m in METRICS.values()} == {
        "accuracy": "drop",
        "top5": "drop",
        "loss": "increase",
        "f1": "drop",
        "prob": "drop",
        "kl": "increase",
        "agreement": "drop",
    }
    assert harm_axis_label({"metric": "loss", "harm": "increase"}) == (
        "loss increase (ablated − intact; higher = worse)"
    )
    assert harm_axis_label({"metric": "accuracy", "harm": "drop"}) == (
        "accuracy drop (intact − ablated; higher = worse)"
    )


def test_paired_delta_interval_is_the_bootstrap_of_differences() -> None:
    model, (x, y) = _model(), _data()
    res = netlens.ablate(model, (x, y), metric="loss", layers="layer2.1", resamples=300)
    with torch.no_grad():
        base = F.cross_entropy(model(x).double(), y, reduction="none").numpy()
    ablated = F.cross_entropy(_skipped_logits(model, "layer2.1", x), y, reduction="none").numpy()
    diffs = Resampler(len(x), 300, 0).apply(lambda idx: ablated[idx].mean(1) - base[idx].mean(1))
    (row,) = res.rows
    low, high = percentile_ci(diffs)
    assert (row["delta_ci_low"], row["delta_ci_high"]) == pytest.approx((low, high), rel=1e-6)
    assert row["increase"] > 0 and row["delta"] > 0


def test_resampler_is_seeded_chunked_and_bounded() -> None:
    a = np.concatenate(list(Resampler(1000, 2000, seed=5).chunks()))
    b = np.concatenate(list(Resampler(1000, 2000, seed=5).chunks()))
    assert a.shape == (2000, 1000) and np.array_equal(a, b)
    assert not np.array_equal(a, np.concatenate(list(Resampler(1000, 2000, seed=6).chunks())))
    big = Resampler(5_000_000, 3)
    assert big.rows == 1  # one resample at a time: memory stays bounded
    assert mean_ci([0, 1, 1, 1]) == (0.75, 0.25, 1.0, 4)


def test_one_macro_f1_for_training_and_ablation() -> None:
    rng = np.random.default_rng(0)
    label, pred = rng.integers(0, 4, 50), rng.integers(0, 6, 50)  # classes 4, 5 never labelled
    cm = confusion_matrix(label, pred, 7)  # class 6 neither labelled nor predicted: left out
    per_class = []
    for c in np.union1d(label, pred):  # scikit-learn's f1_score(average="macro"), by hand
        tp = np.sum((pred == c) & (label == c))
        prec, rec = tp / max(1, np.sum(pred == c)), tp / max(1, np.sum(label == c))
        per_class.append(0.0 if tp == 0 else 2 * prec * rec / (prec + rec))
    assert float(macro_f1(cm)) == pytest.approx(np.mean(per_class))
    assert scores(cm)["f1"] == pytest.approx(np.mean(per_class))
    out = {"label": label, "pred": pred, "value": (label == pred).astype(float)}
    from netlens.analyzers.ablation.scoring import metric_value

    assert metric_value(METRICS["f1"], out, None, 7)[0] == pytest.approx(np.mean(per_class))


def _photos(folder) -> list:
    """Real photos from scikit-image, written as PNG files into ``folder``."""
    import cv2
    from skimage import data as photos

    folder.mkdir(parents=True, exist_ok=True)
    names = ["astronaut", "chelsea", "coffee", "rocket"]
    for name in names:
        cv2.imwrite(str(folder / f"{name}.png"), getattr(photos, name)()[:, :, ::-1])
    return names


def test_images_without_labels_or_with_unknown_names(tmp_path) -> None:
    from test_ablation_study import _saved_model
    from typer.testing import CliRunner

    from netlens.cli.app import app

    path = _saved_model(tmp_path)
    _photos(tmp_path / "flat")  # no class subfolders: no labels at all
    _photos(tmp_path / "named" / "space rockets")  # a class name the model does not have
    runner = CliRunner()
    base = ["ablate", str(path), "--json", "--out"]
    for data in ("flat", "named"):
        res = runner.invoke(
            app,
            [*base, str(tmp_path / f"o-{data}"), "--data", str(tmp_path / data), "--metric", "kl"],
        )
        assert res.exit_code == 0, res.output
        summary = json.loads(res.stdout)
        assert summary["run"]["data"]["items"] == 4
        assert summary["label_source"].startswith("not used")
        assert all(r["increase"] >= 0 for r in summary["table"])
    res = runner.invoke(app, [*base, str(tmp_path / "o-acc"), "--data", str(tmp_path / "flat")])
    assert res.exit_code == 1 and "--metric prob, kl or agreement" in res.output
    model, (x, _) = _model(), _data(12)
    tensors_only = netlens.ablate(model, x, metric="prob", resamples=50)
    with_labels = netlens.ablate(
        model, (x, torch.zeros(12, dtype=torch.long)), metric="prob", resamples=50
    )
    assert tensors_only.table == with_labels.table  # labels are never read


def test_a_list_of_channels() -> None:
    model, data = _model(), _data(20)
    res = netlens.ablate(model, data, layers="layer2", channels="3,0,9", points=4, resamples=50)
    assert [r["channel"] for r in res.rows] == [0, 3, 9]
    assert res.arrays["curve_k"].tolist() == [0, 1, 2, 3]
    every = netlens.ablate(model, data, layers="layer2", channels=True, resamples=50)
    assert [r["value"] for r in res.rows] == [every.rows[c]["value"] for c in (0, 3, 9)]
    with pytest.raises(netlens.NetlensError, match="channel 99 is out of range.*16 channels"):
        netlens.ablate(model, data, layers="layer2", channels=[99])

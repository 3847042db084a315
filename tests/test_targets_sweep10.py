"""Sweep 10: per-image targets stay with their images when a file is skipped; a plugin whose
compute() returns no Result gets one line; non-finite numbers are told apart in CSV cells."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import netlens
from netlens.analyzers.base import Analyzer, Option, Result
from netlens.analyzers.options import as_is
from netlens.cli.app import app
from netlens.errors import AnalyzerError, TargetError
from netlens.images import Preprocess
from netlens.models.archs import lenet5
from netlens.plugins import hookimpl
from netlens.plugins.manager import PluginHost
from netlens.targets import resolve_targets

pytestmark = [pytest.mark.usefixtures("one_thread")]

CLASSES = ["a", "b", "c"]


class TargetLogit(Analyzer):
    """A plugin-style analyzer: the logit of the explained class per image."""

    name = "target-logit"
    takes = "images"
    options = (Option("target", None, "class index or name", as_is),)

    def compute(self, run):  # noqa: ANN001, ANN201
        with torch.no_grad():
            logits = run.lens.logits(run.images.tensor)
        idx = resolve_targets(run.options.target, logits, run.lens)[0].index(len(logits))
        rows = zip(run.images.names, idx, strict=True)
        table = [
            {"image": n, "class": int(k), "logit": float(logits[i, k])}
            for i, (n, k) in enumerate(rows)
        ]
        return Result(self.name, table=table)


class ReturnsDict(Analyzer):
    """A plugin's slip: compute() returns a dict."""

    name = "returns-dict"
    takes = "images"

    def compute(self, run):  # noqa: ANN001, ANN201
        return {"oops": 1}


class Plugin:
    @hookimpl
    def netlens_register_analyzers(self, registry):  # noqa: ANN001, ANN201
        registry.add("target-logit", TargetLogit())
        registry.add("returns-dict", ReturnsDict())


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sweep10")
    torch.manual_seed(0)
    model = lenet5(num_classes=3, in_chans=3, img_size=32).eval()
    lens = netlens.Lens(model, Preprocess(size=(32, 32)), classes=CLASSES)
    netlens.save(lens, root / "tiny.pt", arch="lenet5", arch_kwargs={"in_chans": 3, "img_size": 32})
    rng = np.random.default_rng(0)
    for name in ("first.png", "third.png"):
        img = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        cv2.circle(img, (20, 18), 9, (0, 0, 255), -1)
        cv2.imwrite(str(root / name), img)
    (root / "broken.png").write_bytes(b"not a png")
    return root


def _lens(files: Path) -> netlens.Lens:
    return netlens.load(files / "tiny.pt", host=PluginHost([Plugin()]))


def _inputs(files: Path) -> list[Path]:
    return [files / "first.png", files / "broken.png", files / "third.png"]


@pytest.mark.parametrize("given", [[0, 1, 2], ["a", "b", "c"], "0,1,2", np.array([0, 1, 2])])
def test_per_image_targets_skip_with_the_unreadable_file(files: Path, given: object) -> None:
    lens = _lens(files)
    cam = lens.cam(_inputs(files), target=given, progress=False)
    assert [r["image"] for r in cam.table] == ["first", "third"]
    assert cam.targets.reshape(-1).tolist() == [0, 2] and len(cam.skipped) == 1
    want = lens.cam([files / "first.png", files / "third.png"], target=[0, 2], progress=False)
    np.testing.assert_allclose(cam.heatmaps, want.heatmaps, rtol=1e-5, atol=1e-6)
    # a plugin reading run.options.target gets the targets of the images that were read
    got = lens.run("target-logit", _inputs(files), target=given, progress=False)
    assert [(r["image"], r["class"]) for r in got.table] == [("first", 0), ("third", 2)]
    with torch.no_grad():  # the reference: each image alone, its own class's logit
        ref = [
            float(lens.logits(lens.preprocess([files / f]))[0, k])
            for f, k in (("first.png", 0), ("third.png", 2))
        ]
    np.testing.assert_allclose([r["logit"] for r in got.table], ref, rtol=1e-5, atol=1e-6)


def test_a_list_as_long_as_the_readable_images_is_refused(files: Path) -> None:
    """One entry per readable image could be a miscounted list shifted onto other images."""
    with pytest.raises(TargetError, match=r"^2 targets for 3 images given, 2 of them readable"):
        _lens(files).run("target-logit", _inputs(files), target=[1, 2], progress=False)


def test_a_list_of_another_length_says_both_counts(files: Path) -> None:
    lens = _lens(files)
    for run in (
        lambda t: lens.cam(_inputs(files), target=t, progress=False),
        lambda t: lens.run("target-logit", _inputs(files), target=t, progress=False),
    ):
        with pytest.raises(
            TargetError,
            match=r"^4 targets for 3 images given, 2 of them "
            r"readable; give one per image given",
        ):
            run([0, 1, 2, 0])
    with pytest.raises(TargetError, match=r"^3 targets given for 2 images; give one per"):
        lens.cam([files / "first.png", files / "third.png"], target=[0, 1, 2], progress=False)


def test_cli_skip_bad_with_one_target_per_input(files: Path, tmp_path: Path) -> None:
    args = ["cam", str(files / "tiny.pt"), *map(str, _inputs(files)), "-t", "0,1,2"]
    res = CliRunner().invoke(app, [*args, "--skip-bad", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "o" / "cam.json").read_text())
    assert [(d["image"], d["target"]) for d in doc["images"]] == [("first", 0), ("third", 2)]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "p")])
    assert res.exit_code == 3, res.output  # finished, a file skipped
    bad = CliRunner().invoke(app, [*args[:-1], "0,1,2,0", "--out", str(tmp_path / "q")])
    assert bad.exit_code == 1
    assert "error: 4 targets for 3 images given, 2 of them readable" in bad.output


def test_compute_returning_a_dict_is_one_line(files: Path) -> None:
    lens = _lens(files)
    with pytest.raises(
        AnalyzerError,
        match=r"^analyzer 'returns-dict': compute\(\) returned a "
        r"dict; return a netlens Result",
    ):
        lens.run("returns-dict", [files / "first.png"], progress=False)


def test_csv_cells_tell_nan_and_infinities_from_missing(tmp_path: Path) -> None:
    values = [
        float("nan"),
        float("inf"),
        -float("inf"),
        None,
        np.float32("nan"),
        torch.tensor(float("-inf")),
        np.float64(1.5),
    ]
    rows = [{"k": i, "v": v} for i, v in enumerate(values)]
    Result("demo", table=rows).save(tmp_path)
    cells = [r["v"] for r in csv.DictReader((tmp_path / "demo.csv").open())]
    assert cells == ["nan", "inf", "-inf", "", "nan", "-inf", "1.5"]
    assert [float(c) for c in cells[:3]] == pytest.approx(
        [float("nan"), float("inf"), -float("inf")], nan_ok=True
    )
    doc = json.loads((tmp_path / "demo.json").read_text())  # strict JSON: null for all four
    assert [r["v"] for r in doc["table"]] == [None] * 6 + [1.5]

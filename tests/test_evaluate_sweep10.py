"""evaluate (sweep 10): a dense model's default metrics, --limit's silent subset, a flat map's
pixel order and the images with an empty mask, named."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import typer
from torch import nn

import netlens
from netlens.analyzers.evaluate import plan_cost
from netlens.cli.app import app
from netlens.data import ArrayDataset
from netlens.errors import DataError, NetlensError
from netlens.metrics.perturb import image_ranks

pytestmark = [pytest.mark.usefixtures("one_thread")]

SIZE = 32
CLASSES = ["red", "green", "blue"]


class Net(nn.Module):
    def __init__(self, out: int = 3, dense: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, out, 1) if dense else nn.Linear(8, out)
        self.dense = dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.head(f) if self.dense else self.head(f.mean(dim=(2, 3)))


def load(model: nn.Module, **kw) -> netlens.Lens:  # noqa: ANN003
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return netlens.load(model, classes=CLASSES, **kw)


def arrays(n: int, masks: bool = True, seed: int = 0) -> ArrayDataset:
    """Noisy images with a coloured square (the class) and its mask."""
    rng = np.random.default_rng(seed)
    images = rng.normal(120, 30, (n, SIZE, SIZE, 3)).clip(0, 255).astype(np.uint8)
    labels = np.arange(n) % 3
    m = np.zeros((n, SIZE, SIZE), bool)
    for i in range(n):
        y, x = rng.integers(0, SIZE - 8, 2)
        images[i, y : y + 8, x : x + 8] = np.roll([230, 40, 40], labels[i])
        m[i, y : y + 8, x : x + 8] = True
    return ArrayDataset(images, labels, CLASSES, masks=m if masks else None)


def folder(root: Path, per_class: int = 2, blank: tuple[str, ...] = ()) -> Path:
    """``root/<class>/<i>.png`` and their masks in ``root_masks`` (those in ``blank`` empty)."""
    ds = arrays(per_class * 3)
    for i in range(len(ds.labels)):
        cls = CLASSES[int(ds.labels[i])]
        for base, picture in (
            (root, ds.images[i][..., ::-1]),
            (root.with_name(root.name + "_masks"), None),
        ):
            (base / cls).mkdir(parents=True, exist_ok=True)
            if picture is None:
                empty = f"{cls}/{i}.png" in blank
                picture = (
                    np.zeros((SIZE, SIZE), np.uint8)
                    if empty
                    else ds.masks[i].astype(np.uint8) * 255
                )
            cv2.imwrite(str(base / cls / f"{i}.png"), np.ascontiguousarray(picture))
    return root


# -- 1: a dense model's default metrics -----------------------------------------------------
def test_default_metrics_of_a_dense_model_leave_out_the_class_probability_ones() -> None:
    """Default metrics ('all the data allows') refused a segmenter outright, advising
    --metrics pointing,energy, an option the CLI does not have (it is --metric)."""
    lens = load(Net(3, dense=True), input_size=(3, SIZE, SIZE))
    ds = arrays(4)
    res = lens.evaluate(ds, methods="gradcam", limit=4)
    assert res.meta["metrics"] == ["pointing", "energy"]
    ref = lens.evaluate(ds, methods="gradcam", metrics="pointing,energy", limit=4)
    assert [r["mean"] for r in res.table] == [r["mean"] for r in ref.table]
    left = [w for w in res.meta["warnings"] if "left out" in w]
    assert len(left) == 1 and left[0].startswith(
        "deletion, insertion, road-morf, road-lerf left out"
    )
    assert f"N×3×{SIZE}×{SIZE} (dense)" in left[0]
    assert not any("left out" in w for w in ref.meta["warnings"])
    assert plan_cost(lens, ds, "gradcam", None, 4).metrics == ["pointing", "energy"]
    with pytest.raises(NetlensError) as err:  # asked for: refused in one line
        lens.evaluate(ds, methods="gradcam", metrics="pointing,deletion", limit=4)
    line = str(err.value)
    assert "\n" not in line and "--metric pointing,energy" in line and "--metrics" not in line
    options = {o for p in typer.main.get_command(app).commands["evaluate"].params for o in p.opts}
    assert "--metric" in options and "--metrics" not in options  # the advice is an option
    with pytest.raises(DataError, match="no metric can score this.*(dense).*give masks"):
        lens.evaluate(arrays(4, masks=False), methods="gradcam", limit=4)


# -- 2: --limit's first items -----------------------------------------------------------------
def test_limit_says_the_first_n_of_m_images_and_the_classes_left_out(tmp_path: Path) -> None:
    """-n 2 of a 6-image, 3-class folder scored the first class only, without a word."""
    root = folder(tmp_path / "data")
    lens = load(Net(), input_size=(3, SIZE, SIZE))
    labels = [c for c in sorted(p.name for p in root.iterdir()) for _ in (root / c).iterdir()]
    for limit in (2, 4, None):
        res = lens.evaluate(root, methods="gradcam", metrics="deletion", steps=2, limit=limit)
        n = len(labels) if limit is None else limit
        used, every = len(set(labels[:n])), len(set(labels))
        scope = res.meta["data_scope"]
        assert (scope["images"], scope["images_total"]) == (n, 6)
        assert (scope["classes"], scope["classes_total"]) == (used, every)
        cut = [w for w in res.meta["warnings"] if "classes are in its first" in w]
        if limit is None:
            assert scope["text"] == "all 6 images" and not cut
            assert res.headline().startswith("evaluate over 6 images:")
            continue
        text = f"the first {n} of 6 images ({used} of {every} classes)"
        assert scope["text"] == text and res.headline().startswith(f"evaluate over {text}:")
        assert len(cut) == 1 and cut[0].startswith(f"only {used} of the data's {every} classes")
        assert "--limit 6" in cut[0]


# -- 3: a flat map takes the random baseline's order -------------------------------------------
def test_a_flat_map_is_ranked_in_the_random_baselines_order() -> None:
    rng = np.random.default_rng(3)
    heat = np.stack([np.zeros((6, 5)), rng.random((6, 5)), np.full((6, 5), 2.0)])
    ranks = image_ranks(heat, "heatmap", [11, 12, 13])
    for i, s in ((0, 11), (2, 13)):  # the baseline: a permutation drawn with the image's seed
        assert (ranks[i] == np.random.default_rng(s).permutation(30).reshape(6, 5)).all()
    tie = np.random.default_rng(12).random(30)  # a map with values: by relevance, as before
    order = np.lexsort((tie, -heat[1].ravel()))
    want = np.empty(30, np.int64)
    want[order] = np.arange(30)
    assert (ranks[1] == want.reshape(6, 5)).all()


def test_an_image_with_a_flat_map_scores_its_random_baseline() -> None:
    """The flat-map warning said 'random order (the random baseline's)', but the tie-break
    draw ordered it: per image, deletion 0.23207 against its baseline 0.23501."""
    model = Net()
    with torch.no_grad():
        model.head.weight[0] = -model.head.weight[0].abs() - 0.1  # red: only negative evidence
    lens, ds = load(model), arrays(6)
    metrics = "deletion,insertion,road-morf"
    res = lens.evaluate(ds, methods="gradcam", metrics=metrics, steps=4, limit=6)
    flat = np.flatnonzero(
        [
            np.ptp(h) == 0
            for h in lens.cam(
                torch.stack([ds[i][0] for i in range(6)]), target=[0, 1, 2] * 2
            ).heatmaps
        ]
    )
    assert len(flat) >= 1 and res.meta["flat_maps"]["gradcam"] == len(flat)
    for m in metrics.split(","):
        score, base = res.arrays[f"gradcam/{m}/score"], res.arrays[f"gradcam/{m}/baseline"]
        if m == "road-morf":  # the same pixels; imputed by a joint iterative solve (tol 1e-5)
            np.testing.assert_allclose(score[flat], base[flat], atol=1e-6)
        else:
            assert (score[flat] == base[flat]).all(), m
    assert any("random order, the random baseline's own" in w for w in res.meta["warnings"])


# -- 4: the images with an empty mask, named --------------------------------------------------
def test_images_with_an_empty_mask_are_named(tmp_path: Path) -> None:
    root = folder(tmp_path / "data", blank=("green/1.png",))
    lens = load(Net(), input_size=(3, SIZE, SIZE))
    res = lens.evaluate(root, methods="gradcam", metrics="pointing,energy")
    lines = [w for w in res.meta["warnings"] if "empty mask" in w]
    assert len(lines) == 1 and lines[0].startswith("1 of 6 image(s) have an empty mask")
    assert lines[0].endswith(f"leave them out: {root / 'green' / '1.png'}")
    ds = arrays(9)
    for i in range(7):
        ds.masks[i] = False
    lines = [w for w in load(Net()).evaluate(ds, metrics="energy").meta["warnings"] if "empty" in w]
    assert len(lines) == 1
    assert lines[0].endswith("leave them out: item 0, item 1, item 2, item 3, item 4 and 2 more"), (
        lines
    )

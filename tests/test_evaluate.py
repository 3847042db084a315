"""evaluate end to end: Grad-CAM on a small model trained here, Python API and CLI."""

from __future__ import annotations

import json
from functools import lru_cache

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

import netlens
from netlens.data import ArrayDataset
from netlens.errors import DataError

SIZE, PATCH = 32, 8
COLOURS = ((230, 40, 40), (40, 230, 40), (40, 40, 230))


def toy_data(n: int, seed: int) -> ArrayDataset:
    """Noisy grey images with one coloured square; the colour is the class."""
    rng = np.random.default_rng(seed)
    images = rng.normal(120, 25, (n, SIZE, SIZE, 3)).clip(0, 255).astype(np.uint8)
    labels = np.arange(n) % len(COLOURS)
    masks = np.zeros((n, SIZE, SIZE), bool)
    for i in range(n):
        y, x = rng.integers(0, SIZE - PATCH, 2)
        images[i, y : y + PATCH, x : x + PATCH] = COLOURS[labels[i]]
        masks[i, y : y + PATCH, x : x + PATCH] = True
    return ArrayDataset(images, labels, ["red", "green", "blue"], masks=masks)


class GapNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(16, 3)
        self.input_size = (3, SIZE, SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


@lru_cache(maxsize=1)
def train_toy(seed: int = 0) -> GapNet:
    """A few seconds of Adam on 300 images: enough to learn the colours (shared by modules)."""
    torch.manual_seed(seed)
    ds = toy_data(300, seed=100 + seed)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.as_tensor(ds.labels)
    model = GapNet()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(4):
        for b in torch.randperm(len(x)).split(30):
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module")
def trained() -> GapNet:
    return train_toy()


def test_gradcam_points_at_the_object_far_above_chance(trained: GapNet) -> None:
    lens = netlens.load(trained)
    data = toy_data(24, seed=7)
    result = lens.evaluate(
        data, methods="gradcam", metrics="pointing,energy,deletion", steps=8, limit=24
    )
    rows = {r["metric"]: r for r in result.table}
    chance = rows["pointing"]["baseline"]
    assert chance == pytest.approx(PATCH**2 / SIZE**2)
    assert rows["pointing"]["mean"] >= 0.6  # chance is 0.06
    assert rows["energy"]["mean"] > 3 * rows["energy"]["baseline"]
    assert rows["deletion"]["mean"] < rows["deletion"]["baseline"]  # beats the random order
    assert rows["pointing"]["ci_low"] <= rows["pointing"]["mean"] <= rows["pointing"]["ci_high"]
    assert result.arrays["gradcam/deletion/curve"].shape == (24, 9)
    assert result.meta["forward_passes"] == result.meta["planned_forward_passes"] == 24 * 9 * 2


def test_saves_table_json_and_curves(trained: GapNet, tmp_path) -> None:
    lens = netlens.load(trained)
    result = lens.evaluate(
        toy_data(4, seed=3),
        methods="gradcam,eigencam",
        metrics="pointing,insertion,road-lerf",
        steps=4,
        fractions=(0.3, 0.6),
    )
    files = {p.name for p in result.save(tmp_path)}
    assert {"evaluate.csv", "evaluate.json", "evaluate-scores.png", "evaluate-curves.png"} <= files
    summary = json.loads((tmp_path / "evaluate.json").read_text())
    assert [(r["method"], r["metric"]) for r in summary["table"]][:3] == [
        ("gradcam", "pointing"),
        ("gradcam", "insertion"),
        ("gradcam", "road-lerf"),
    ]
    assert result.arrays["eigencam/road-lerf/curve"].shape == (4, 2)


def test_masks_are_needed_for_localisation(trained: GapNet) -> None:
    lens = netlens.load(trained)
    ds = toy_data(4, seed=3)
    plain = ArrayDataset(ds.images, ds.labels, ds.classes)
    with pytest.raises(DataError, match="masks"):
        lens.evaluate(plain, metrics="pointing")
    loader = torch.utils.data.DataLoader(ds, batch_size=2)  # a DataLoader keeps its masks
    assert lens.evaluate(loader, metrics="pointing", limit=2).table[0]["n"] == 2
    result = lens.evaluate(plain, steps=2, fractions=(0.5,), limit=2)  # the metrics it allows
    assert {r["metric"] for r in result.table} == {
        "deletion",
        "insertion",
        "road-morf",
        "road-lerf",
    }


def test_user_model_left_as_it_was(trained: GapNet) -> None:
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    trained.train()
    try:
        netlens.load(trained).evaluate(toy_data(2, seed=1), metrics="deletion", steps=2)
        assert trained.training
        assert all(p.grad is None for p in trained.parameters())
        assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())
        assert not trained._forward_hooks and not trained._forward_pre_hooks
    finally:
        trained.eval()


def test_cli_prints_the_cost_and_writes_json(trained: GapNet, tmp_path) -> None:
    from netlens.cli.app import app

    model_path = tmp_path / "toy.pt"
    torch.save(trained, model_path)
    ds = toy_data(6, seed=5)
    for i in range(len(ds)):
        folder = tmp_path / "data" / ds.classes[ds.labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i}.png"), ds.images[i][..., ::-1])
    args = [
        "evaluate",
        str(model_path),
        "--trust",
        "--data",
        str(tmp_path / "data"),
        "--metric",
        "deletion",
        "--steps",
        "4",
        "--limit",
        "3",
        "--out",
        str(tmp_path / "o"),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "forward-pass 30 images" in res.output  # 3 images × 5 steps × 2 orders
    res = CliRunner().invoke(app, [*args, "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["table"][0]["metric"] == "deletion" and payload["images"] == 3
    other = [*args[:5], *args[7:-2], "--metric", "pointing"]  # --metric once: pointing
    bad = CliRunner().invoke(app, [*other, "--out", str(tmp_path)])
    assert bad.exit_code == 1 and "needs ground-truth masks" in bad.output
    for i in range(len(ds)):  # the documented folder layout: <data>_masks/<class>/<name>.png
        folder = tmp_path / "data_masks" / ds.classes[ds.labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i}.png"), ds.masks[i].astype(np.uint8) * 255)
    good = CliRunner().invoke(app, [*other, "--json", "--out", str(tmp_path / "p")])
    assert good.exit_code == 0, good.output
    row = json.loads(good.stdout)["table"][0]
    assert row["metric"] == "pointing" and row["baseline"] == pytest.approx(PATCH**2 / SIZE**2)


class FailsOnBigBatches(nn.Module):
    """Explains fine (small batches), then raises inside a batched metric's forward."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.input_size = inner.input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > 4:
            raise RuntimeError("boom")
        return self.inner(x)


def test_no_hook_or_flag_left_when_the_model_raises(trained: GapNet) -> None:
    model = FailsOnBigBatches(trained).train()
    with pytest.raises(RuntimeError, match="boom"):
        netlens.load(model).evaluate(toy_data(2, seed=1), metrics="deletion", steps=8, chunk=2)
    assert all(m.training for m in model.modules())
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)
    trained.eval()


def _mask_folder(tmp_path, n: int = 6):  # noqa: ANN202
    ds = toy_data(n, seed=5)
    for i in range(n):
        folder = tmp_path / "data" / ds.classes[ds.labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i}.png"), ds.images[i][..., ::-1])
        (tmp_path / "data_masks" / ds.classes[ds.labels[i]]).mkdir(parents=True, exist_ok=True)
    return ds


def _write_masks(tmp_path, ds, encode) -> None:  # noqa: ANN001
    for i in range(len(ds)):
        path = tmp_path / "data_masks" / ds.classes[ds.labels[i]] / f"{i}.png"
        cv2.imwrite(str(path), encode(ds.masks[i]))


def _localisation(trained, tmp_path) -> dict:  # noqa: ANN001
    lens = netlens.load(trained)
    res = lens.evaluate(tmp_path / "data", methods="gradcam", metrics="pointing,energy")
    return {r["metric"]: (r["mean"], r["baseline"], r["n"]) for r in res.table}, res


@pytest.mark.parametrize(
    "encode",
    [
        lambda m: m.astype(np.uint16),  # a 16-bit label image: object = 1
        lambda m: np.dstack([np.zeros_like(m), np.zeros_like(m), m]).astype(np.uint8),  # red
        lambda m: np.dstack([np.zeros(m.shape + (3,), np.uint8), m.astype(np.uint8) * 255]),
    ],
    ids=["16-bit", "colour", "alpha-only"],
)
def test_mask_pngs_of_any_depth_and_colour_read_as_the_8_bit_ones(trained, tmp_path, encode):
    """A 16-bit label mask (object = 1) was read as all background: pointing 0, energy 0 and
    chance 0, without a word (OpenCV's grayscale read scales 16 bits down by 256)."""
    ds = _mask_folder(tmp_path)
    _write_masks(tmp_path, ds, lambda m: m.astype(np.uint8) * 255)
    want, _ = _localisation(trained, tmp_path)
    _write_masks(tmp_path, ds, encode)
    got, _ = _localisation(trained, tmp_path)
    assert got == want and want["pointing"][1] == pytest.approx(PATCH**2 / SIZE**2)


def test_a_mask_not_shaped_as_its_image_is_refused(trained, tmp_path) -> None:
    """A mask drawn on the stored pixels of an EXIF-rotated photo (read upright) or on another
    image was resized onto the image, and scored, without a word."""
    ds = _mask_folder(tmp_path)
    _write_masks(tmp_path, ds, lambda m: m.astype(np.uint8) * 255)
    bad = tmp_path / "data_masks" / ds.classes[ds.labels[2]] / "2.png"
    cv2.imwrite(str(bad), np.zeros((SIZE, SIZE * 2), np.uint8))
    with pytest.raises(DataError, match=r"2.png is 64×32 but its image .*2.png is 32×32"):
        _localisation(trained, tmp_path)
    cv2.imwrite(str(bad), np.full((SIZE * 2, SIZE * 2), 255, np.uint8))  # same shape, 2× scale
    _localisation(trained, tmp_path)


def test_an_empty_mask_is_left_out_of_pointing_and_energy_with_a_warning(trained, tmp_path):
    """An object outside the crop (or a blank mask) scored 0 and pulled the chance level down,
    without a word; now those images are left out (NaN), counted in n and warned about."""
    ds = _mask_folder(tmp_path)
    _write_masks(tmp_path, ds, lambda m: m.astype(np.uint8) * 255)
    want, _ = _localisation(trained, tmp_path)
    blank = tmp_path / "data_masks" / ds.classes[ds.labels[1]] / "1.png"
    cv2.imwrite(str(blank), np.zeros((SIZE, SIZE), np.uint8))
    got, res = _localisation(trained, tmp_path)
    assert got["pointing"][2] == got["energy"][2] == 5 and want["pointing"][2] == 6
    assert np.isnan(res.arrays["gradcam/pointing/score"]).sum() == 1
    [warning] = res.meta["warnings"]
    assert warning.startswith(
        "1 of 6 image(s) have an empty mask at the model's input (the object lies outside the "
        "crop, or the mask is blank): pointing and energy leave them out: "
    )
    assert warning.endswith(f"{ds.classes[ds.labels[1]]}/1.png")  # the image, named


def test_flat_maps_are_left_out_of_pointing_with_a_warning(trained) -> None:  # noqa: ANN001
    """A class whose evidence at the layer is all negative has all-zero Grad-CAM maps: they
    scored pointing-game hits (every pixel tied for the maximum), against energy's NaN."""
    import copy

    model = copy.deepcopy(trained)
    with torch.no_grad():
        model.fc.weight[0] = -model.fc.weight[0].abs() - 0.1  # red: only negative evidence
    data = toy_data(12, seed=7)  # labels 0, 1, 2, 0, ...: four red images
    res = netlens.load(model).evaluate(
        data, methods="gradcam", metrics="pointing,energy", target="label", limit=12
    )
    point = res.arrays["gradcam/pointing/score"]
    assert np.isnan(point[data.labels == 0]).all() and not np.isnan(point[data.labels > 0]).any()
    rows = {r["metric"]: r for r in res.table}
    assert rows["pointing"]["n"] == rows["energy"]["n"] == 8
    assert rows["pointing"]["baseline"] == pytest.approx(PATCH**2 / SIZE**2)
    assert res.meta["warnings"] == [
        "gradcam: 4 of 12 map(s) are flat (all zero: no evidence for the target at this "
        "layer): pointing and energy leave them out"
    ]


def test_per_image_scores_do_not_depend_on_the_chunk(trained) -> None:  # noqa: ANN001
    """Tie-breaking and random orders were seeded by an image's place in its chunk, so
    ``--chunk`` (a speed knob) or a DataLoader's batch size changed every score."""
    ds = toy_data(6, seed=9)
    lens = netlens.load(trained)
    got = [
        lens.evaluate(
            ds, methods="gradcam", metrics="deletion,road-morf", steps=4, chunk=chunk, seed=3
        ).arrays
        for chunk in (1, 4, 6)
    ]
    for key in ("gradcam/deletion/score", "gradcam/deletion/baseline", "gradcam/road-morf/score"):
        for other in got[1:]:  # equal up to float sums over other batch compositions
            np.testing.assert_allclose(got[0][key], other[key], atol=1e-6)


def test_the_seed_seeds_the_bootstrap_too(trained) -> None:  # noqa: ANN001
    """``--seed`` seeds every bootstrap (docs/ablation.md); evaluate's and sanity's were always
    seeded 0."""
    from netlens.metrics.bootstrap import mean_ci

    lens = netlens.load(trained)
    rows = {
        seed: lens.evaluate(toy_data(12, seed=4), methods="gradcam", metrics="energy", seed=seed)
        for seed in (1, 2)
    }
    scores = rows[1].arrays["gradcam/energy/score"]
    for seed, res in rows.items():
        row = res.table[0]
        assert (row["mean"], row["ci_low"], row["ci_high"], row["n"]) == mean_ci(scores, seed=seed)
    assert rows[1].table[0]["ci_low"] != rows[2].table[0]["ci_low"]

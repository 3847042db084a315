"""A dataset root (``train/`` + ``Val/``) given as data to an analyzer that reads no labels is
read as its held-out split, with a warning naming it (it was refused, hinting at train/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import netlens

pytestmark = [pytest.mark.usefixtures("one_thread")]


def test_stats_on_a_split_root_reads_its_val_split(tmp_path: Path) -> None:
    for split, n in (("train", 3), ("Val", 2)):
        for c in "ab":
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = np.random.default_rng(10 * i + ord(c)).integers(0, 255, (16, 16, 3))
                Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / split / c / f"{i}.png")
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    ).eval()
    lens = netlens.load(net, input_size=16, mean=[0.5] * 3, std=[0.5] * 3, classes=["a", "b"])
    with pytest.warns(UserWarning, match="reading its val split Val/"):
        res = lens.run("stats", str(tmp_path), layers="1")
    assert res.meta["samples"] == 4  # the 4 Val images, not the 6 training ones
    files = sorted((tmp_path / "Val").rglob("*.png"))
    x = torch.cat([lens.preprocess(Image.open(f)) for f in files])
    with torch.no_grad():
        ref = torch.relu(net[0](x))
    row = next(r for r in res.table if r["layer"] == "1")
    assert row["mean"] == pytest.approx(float(ref.mean()), rel=1e-5)


def test_a_split_root_with_its_mask_folder_is_still_a_split_root(tmp_path: Path) -> None:
    """``val_masks/`` beside ``val/`` (where evaluate reads val's masks) is neither a split nor
    a class: the root still reads its val split (it read train + val + the mask PNGs)."""
    for split, n in (("train", 3), ("val", 2), ("val_masks", 2)):
        for c in "ab":
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = np.random.default_rng(10 * i + ord(c)).integers(0, 255, (16, 16, 3))
                Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / split / c / f"{i}.png")
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    ).eval()
    lens = netlens.load(net, input_size=16, mean=[0.5] * 3, std=[0.5] * 3, classes=["a", "b"])
    with pytest.warns(UserWarning, match=r"holds the splits train, val: reading its val split"):
        res = lens.run("stats", str(tmp_path), layers="1")
    assert res.meta["samples"] == 4

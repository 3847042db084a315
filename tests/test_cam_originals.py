"""A CAM result draws the picture its maps were made of: kept decoded within a memory budget,
and beyond it (a folder of many large photos) read again only if the file is unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import netlens
from netlens.analyzers import cam_result
from netlens.errors import ImageError

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()


def _photo(path, seed: int, height: int = 40) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, 56, 3), dtype=np.uint8)).save(path)


def test_beyond_the_budget_files_are_read_again_only_when_unchanged(tmp_path, monkeypatch) -> None:
    paths = [tmp_path / f"p{i}.png" for i in range(3)]
    for i, p in enumerate(paths):
        _photo(p, i)
    first = np.asarray(Image.open(paths[0]).convert("RGB"))
    one = first.nbytes
    monkeypatch.setattr(cam_result, "KEEP_BYTES", one)  # room for the first picture only
    lens = netlens.load(_net(), input_size=32)
    res = lens.cam([str(p) for p in paths], method="gradcam", layer="0")
    assert isinstance(res.originals[0], np.ndarray)
    assert all(isinstance(o, cam_result.ReadAgain) for o in res.originals[1:])
    before = res.overlay(1, 0)
    np.testing.assert_array_equal(res.overlay(1, 0), before)  # unchanged: read again
    _photo(paths[0], 7, 44)
    _photo(paths[1], 8, 44)  # overwritten after the maps were made (another size too)
    np.testing.assert_array_equal(res.original(0), first)  # kept: as it was
    with pytest.raises(ImageError, match=r"p1.png has changed or gone since its maps were made"):
        res.original(1)
    paths[2].unlink()
    with pytest.raises(ImageError, match=r"p2.png has changed or gone"):
        res.overlay(2, 0)

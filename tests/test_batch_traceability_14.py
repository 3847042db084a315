"""Batch runs say which file each result is and count only what they read: features name each
row's source file, evaluate counts the images it scored (not the unreadable ones), and a target
list is one entry per image given, even when some of them cannot be read."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import netlens
from netlens.errors import TargetError
from netlens.images import Batch
from netlens.targets import align_targets

SIZE = 32


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def _lens() -> netlens.Lens:
    kw = {"input_size": SIZE, "mean": (0.5,) * 3, "std": (0.25,) * 3}
    return netlens.load(Net(), classes=["a", "b", "c"], **kw)


def _png(path, seed: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def test_features_rows_and_meta_name_each_images_file(tmp_path) -> None:
    one, two = _png(tmp_path / "a" / "cat.png", 0), _png(tmp_path / "b" / "cat.png", 1)
    r = _lens().features([one, two], layer="features.0", top=2)
    assert r.meta["images"] == ["cat", "cat_2"]
    assert [s.replace("\\", "/")[-9:] for s in r.meta["sources"]] == ["a/cat.png", "b/cat.png"]
    by_image = {row["image"]: row["source"] for row in r.table}
    assert by_image == dict(zip(r.meta["images"], r.meta["sources"], strict=True))


def test_features_of_a_tensor_have_no_source() -> None:
    r = _lens().features(torch.zeros(2, 3, SIZE, SIZE), layer="features.0", top=1)
    assert r.meta["sources"] == [None, None]
    assert all(row["source"] is None for row in r.table)


def test_evaluate_counts_the_images_it_scored_not_the_unreadable_ones(tmp_path) -> None:
    for i, cls in enumerate(["a", "b", "c", "a", "b"]):
        _png(tmp_path / cls / f"x{i}.png", i)
    (tmp_path / "c" / "broken.jpg").write_bytes(b"not an image")
    r = _lens().evaluate(str(tmp_path), metrics="deletion", steps=4, target="pred")
    assert r.table[0]["n"] == 5
    assert r.meta["images"] == 5
    assert r.meta["data_scope"]["text"] == "5 of 6 images (1 unreadable)"
    assert r.meta["data_scope"]["unreadable"] == 1
    assert "5 images" in r.headline()


def test_evaluate_says_when_the_images_scored_leave_a_class_out(tmp_path) -> None:
    """Every image of class c unreadable: the scores cover a and b only, and it says so."""
    for i, cls in enumerate(["a", "b", "a"]):
        _png(tmp_path / cls / f"x{i}.png", i)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "broken.jpg").write_bytes(b"not an image")
    r = _lens().evaluate(str(tmp_path), metrics="deletion", steps=4, target="pred")
    assert r.meta["data_scope"]["classes"] == 2
    assert any("only 2 of the data's 3 classes" in w for w in r.meta.get("warnings", []))


def test_evaluate_of_readable_data_still_says_all_images(tmp_path) -> None:
    for i, cls in enumerate(["a", "b", "c"]):
        _png(tmp_path / cls / f"x{i}.png", i)
    r = _lens().evaluate(str(tmp_path), metrics="deletion", steps=4, target="pred")
    assert r.meta["images"] == 3 and r.meta["data_scope"]["text"] == "all 3 images"


def _batch(readable: int, unreadable: int) -> Batch:
    kept = list(range(readable + unreadable))[unreadable:]  # the first ones unreadable
    errors = [f"f{i}: cannot be read" for i in range(unreadable)]
    return Batch(
        torch.zeros(readable, 3, 4, 4),
        names=[f"i{i}" for i in kept],
        errors=errors,
        kept=kept if unreadable else None,
    )


def test_a_target_list_as_long_as_the_readable_images_is_refused_when_some_were_unreadable():
    with pytest.raises(TargetError, match=r"2 targets for 3 images given, 2 of them readable"):
        align_targets(["1", "2"], _batch(2, 1))
    with pytest.raises(TargetError, match=r"2 targets for 3 images given, 2 of them readable"):
        align_targets("1,2", _batch(2, 1))


def test_a_target_list_per_image_given_keeps_the_readable_ones_entries():
    assert align_targets(["0", "1", "2"], _batch(2, 1)) == ["1", "2"]
    assert align_targets("0,1,2", _batch(2, 1)) == ["1", "2"]
    spec = ["1", "2"]
    assert align_targets(spec, _batch(2, 0)) is spec
    assert align_targets("3", _batch(2, 1)) == "3"  # one target for all


def test_a_miscounted_list_is_refused_with_all_readable():
    with pytest.raises(TargetError, match=r"2 targets given for 3 images"):
        align_targets(["1", "2"], _batch(3, 0))
